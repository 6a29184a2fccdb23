//! Colours and styles, in one place. The 16 basic colours only, so the TUI reads the same
//! on light and dark terminals and over SSH.

use ratatui::style::{Color, Modifier, Style};

pub(crate) const FOCUS: Style = Style::new().fg(Color::Cyan);
pub(crate) const BORDER: Style = Style::new().fg(Color::DarkGray);
pub(crate) const DIM: Style = Style::new().fg(Color::DarkGray);
pub(crate) const TITLE: Style = Style::new().add_modifier(Modifier::BOLD);
pub(crate) const ME: Style = Style::new().fg(Color::Green).add_modifier(Modifier::BOLD);
pub(crate) const TYPING: Style = Style::new().fg(Color::Green).add_modifier(Modifier::ITALIC);
pub(crate) const EVENT: Style = Style::new().fg(Color::DarkGray).add_modifier(Modifier::ITALIC);
pub(crate) const QUOTE: Style = Style::new().fg(Color::Gray).add_modifier(Modifier::ITALIC);
pub(crate) const DELETED: Style = Style::new().fg(Color::DarkGray).add_modifier(Modifier::ITALIC);
pub(crate) const HIT: Style = Style::new().fg(Color::Black).bg(Color::Yellow);
pub(crate) const SELECTED_BG: Color = Color::DarkGray;
pub(crate) const MARK: Style = Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD);
pub(crate) const LIST_SELECTED: Style = Style::new().bg(Color::Blue).fg(Color::White);
pub(crate) const BADGE: Style = Style::new().fg(Color::Black).bg(Color::Green).add_modifier(Modifier::BOLD);
pub(crate) const VERIFIED: Style = Style::new().fg(Color::Green);
pub(crate) const DANGER: Style = Style::new().fg(Color::White).bg(Color::Red).add_modifier(Modifier::BOLD);
pub(crate) const WARN: Style = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
pub(crate) const NOTICE: Style = Style::new().fg(Color::Cyan);
pub(crate) const TICK: Style = Style::new().fg(Color::Gray);
pub(crate) const TICK_READ: Style = Style::new().fg(Color::LightBlue).add_modifier(Modifier::BOLD);
pub(crate) const STATUS: Style = Style::new().fg(Color::White).bg(Color::Black);
pub(crate) const ROUTE_OK: Style = Style::new().fg(Color::Black).bg(Color::Green).add_modifier(Modifier::BOLD);
pub(crate) const ROUTE_AROUND: Style = Style::new().fg(Color::Black).bg(Color::Yellow).add_modifier(Modifier::BOLD);
pub(crate) const ROUTE_DOWN: Style = Style::new().fg(Color::White).bg(Color::Red).add_modifier(Modifier::BOLD);
pub(crate) const QR: Style = Style::new().fg(Color::Black).bg(Color::White);

/// A sender's colour in groups, the same every time for the same name.
pub(crate) fn sender(name: &str) -> Style {
    const COLORS: [Color; 6] =
        [Color::Magenta, Color::Yellow, Color::Cyan, Color::LightRed, Color::LightBlue, Color::LightMagenta];
    let hash = name.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    let index = usize::try_from(hash).unwrap_or(0) % COLORS.len();
    Style::new().fg(COLORS[index]).add_modifier(Modifier::BOLD)
}
