//! Windows over the screen: help, invite (QR code and link), delete confirmation, reaction
//! picker.

use qrcode::{EcLevel, QrCode, render::unicode::Dense1x2};
use ratatui::{
    Frame,
    layout::Rect,
    style::{Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Clear, Padding, Paragraph},
};

use crate::{
    app::{App, Popup},
    keys::{KEYS, REACTIONS},
    text::{self, one_line, truncate},
    theme,
};

pub(crate) fn draw(frame: &mut Frame<'_>, app: &App) {
    let screen = frame.area();
    match &app.popup {
        None => {}
        Some(Popup::Help(scroll)) => help(frame, screen, *scroll),
        Some(Popup::Invite(link)) => invite(frame, screen, link.as_deref()),
        Some(Popup::ConfirmDelete(id)) => {
            let text = app.open_messages().iter().find(|m| &m.id == id).map(|m| one_line(&m.text)).unwrap_or_default();
            let lines = vec![
                Line::from(format!("“{}”", truncate(&text, 40))),
                Line::default(),
                Line::styled("Everyone in this conversation will see", theme::DIM),
                Line::styled("that a message was deleted.", theme::DIM),
                Line::default(),
                Line::from(vec![
                    Span::styled(" y ", theme::DANGER),
                    Span::raw(" delete    "),
                    Span::styled(" n ", theme::ROUTE_OK),
                    Span::raw(" keep"),
                ]),
            ];
            window(frame, screen, " Delete for everyone? ", lines, 46);
        }
        Some(Popup::React(_, choice)) => {
            let mut spans = vec![Span::raw(" ")];
            for (i, emoji) in REACTIONS.iter().enumerate() {
                let style = if i == *choice { Style::new().add_modifier(Modifier::REVERSED) } else { Style::new() };
                spans.push(Span::styled(format!(" {} {emoji} ", i + 1), style));
            }
            let lines = vec![Line::from(spans), Line::default(), Line::styled(" 1-6 or ← → Enter · Esc", theme::DIM)];
            window(frame, screen, " React ", lines, 42);
        }
    }
}

/// A bordered window `width` wide, as high as its lines, in the middle of `screen`.
fn window(frame: &mut Frame<'_>, screen: Rect, title: &str, lines: Vec<Line<'static>>, width: u16) -> Rect {
    let height = u16::try_from(lines.len()).unwrap_or(u16::MAX).saturating_add(2);
    let area = centered(screen, width, height);
    frame.render_widget(Clear, area);
    let block = Block::bordered()
        .title(Line::styled(title.to_owned(), theme::TITLE))
        .border_style(theme::FOCUS)
        .padding(Padding::horizontal(1));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    frame.render_widget(Paragraph::new(lines), inner);
    inner
}

fn centered(screen: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(screen.width);
    let height = height.min(screen.height);
    Rect { x: screen.x + (screen.width - width) / 2, y: screen.y + (screen.height - height) / 2, width, height }
}

fn help(frame: &mut Frame<'_>, screen: Rect, scroll: u16) {
    let mut lines = Vec::new();
    for (section, keys) in KEYS {
        if !lines.is_empty() {
            lines.push(Line::default());
        }
        lines.push(Line::styled(format!(" {section}"), theme::TITLE.fg(ratatui::style::Color::Cyan)));
        for (key, what) in *keys {
            let pad = 20usize.saturating_sub(text::width(key));
            lines.push(Line::from(vec![
                Span::styled(format!("   {key}"), theme::TITLE),
                Span::raw(" ".repeat(pad)),
                Span::raw((*what).to_owned()),
            ]));
        }
    }
    let total = u16::try_from(lines.len()).unwrap_or(u16::MAX);
    let height = (total + 2).min(screen.height.saturating_sub(2));
    let scroll = scroll.min(total.saturating_sub(height.saturating_sub(2)));
    let area = centered(screen, 78, height);
    frame.render_widget(Clear, area);
    let more = if total + 2 > height { " ↑ ↓ scroll · any other key closes " } else { " any key closes " };
    let block = Block::bordered()
        .title(Line::styled(" Keys ", theme::TITLE))
        .title_bottom(Line::styled(more, theme::DIM).right_aligned())
        .border_style(theme::FOCUS);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    frame.render_widget(Paragraph::new(lines).scroll((scroll, 0)), inner);
}

/// The QR code's rows (dark modules as dark cells), or `None` if the link is too long for one.
pub(crate) fn qr_rows(link: &str) -> Option<Vec<String>> {
    let code = QrCode::with_error_correction_level(link.as_bytes(), EcLevel::L).ok()?;
    let image = code.render::<Dense1x2>().quiet_zone(true).build();
    Some(image.lines().map(str::to_owned).collect())
}

fn invite(frame: &mut Frame<'_>, screen: Rect, link: Option<&str>) {
    let Some(link) = link else {
        window(frame, screen, " Invite someone ", vec![Line::from("Making an invite…")], 34);
        return;
    };
    let link = one_line(link);
    let qr = qr_rows(&link);
    let qr_width = qr.as_ref().and_then(|q| q.first()).map_or(0, |r| text::width(r));
    let qr_height = qr.as_ref().map_or(0, Vec::len);
    let width = usize::from(screen.width.saturating_sub(4)).min(qr_width.max(62));
    let room = usize::from(screen.height.saturating_sub(2));
    let footer = [
        "Scan the code, or send the link over a channel you trust.",
        "It works once and expires.  c copies the link · Esc closes",
    ];
    // Rows besides the code and the link: two blank lines and the footer.
    let fixed = 2 + footer.len();
    let mut lines: Vec<Line<'static>> = Vec::new();
    match qr {
        Some(rows) if qr_width <= width && qr_height + fixed < room => {
            let pad = " ".repeat((width - qr_width) / 2);
            for row in rows {
                lines.push(Line::from(vec![Span::raw(pad.clone()), Span::styled(row, theme::QR)]));
            }
        }
        Some(_) => {
            let need = format!("{}x{}", qr_width + 4, qr_height + fixed + 3);
            lines.push(Line::styled(format!("Enlarge the terminal to {need} to see the QR code."), theme::NOTICE));
        }
        None => {
            let what = format!("This invite is {} characters, more than a QR code holds.", link.chars().count());
            lines.push(Line::styled(truncate(&what, width), theme::NOTICE));
        }
    }
    lines.push(Line::default());
    let chars: Vec<char> = link.chars().collect();
    let rows: Vec<String> = chars.chunks(width.max(1)).map(|c| c.iter().collect()).collect();
    let room_for_link = room.saturating_sub(lines.len() + 1 + footer.len()).max(1);
    if rows.len() <= room_for_link {
        lines.extend(rows.into_iter().map(Line::from));
    } else {
        let shown = room_for_link.saturating_sub(1);
        let rest: usize = rows[shown..].iter().map(|r| r.chars().count()).sum();
        lines.extend(rows.into_iter().take(shown).map(Line::from));
        lines.push(Line::styled(format!("… and {rest} more characters: c copies the whole link"), theme::NOTICE));
    }
    lines.push(Line::default());
    lines.extend(footer.iter().map(|f| Line::styled(truncate(f, width), theme::DIM)));
    window(frame, screen, " Invite someone ", lines, u16::try_from(width + 4).unwrap_or(u16::MAX));
}
