//! Drawing: the conversation list, the open conversation, the compose box, the notice line
//! and the connection status line. Pure: reads the [`App`], changes nothing.

use ratatui::{
    Frame,
    layout::{Position, Rect},
    style::{Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Paragraph},
};

use crate::{
    app::{App, Focus, Mode},
    clock::{self, Local},
    layout::{self, Areas},
    model::{ConversationSummary, Route},
    popup,
    text::{self, one_line, truncate},
    theme, transcript,
};

/// Draws the whole screen for `app` at `now_ms` (Unix milliseconds).
pub fn draw(frame: &mut Frame<'_>, app: &App, now_ms: u64) {
    let areas = layout::areas(app, frame.area());
    if let Some(area) = areas.list {
        list(frame, app, area, now_ms);
    }
    if let Some(area) = areas.chat {
        chat(frame, app, &areas, area, now_ms);
    }
    if let Some(area) = areas.compose {
        compose(frame, app, area);
    }
    if let (Some(area), Some(notice)) = (areas.notice, &app.notice) {
        let style = if notice.error { theme::WARN } else { theme::NOTICE };
        let text = truncate(&one_line(&notice.text), usize::from(area.width.saturating_sub(1)));
        frame.render_widget(Paragraph::new(Line::styled(format!(" {text}"), style)), area);
    }
    status(frame, app, areas.status, now_ms);
    popup::draw(frame, app);
}

fn pane(title: Line<'static>, focused: bool) -> Block<'static> {
    Block::bordered().title(title).border_style(if focused { theme::FOCUS } else { theme::BORDER })
}

/// Both sides of a row: `left` cut to leave room for `right`, which sits at the right edge.
fn spread(left: Vec<Span<'static>>, right: Vec<Span<'static>>, width: usize, style: Style) -> Line<'static> {
    let right_width: usize = right.iter().map(|s| text::width(&s.content)).sum();
    let room = width.saturating_sub(right_width + 1);
    let mut spans = Vec::new();
    let mut used = 0;
    for span in left {
        let w = text::width(&span.content);
        if used + w > room {
            let cut = truncate(&span.content, room - used);
            used += text::width(&cut);
            spans.push(Span::styled(cut, span.style));
            break;
        }
        used += w;
        spans.push(span);
    }
    spans.push(Span::raw(" ".repeat(width.saturating_sub(used + right_width))));
    spans.extend(right);
    Line::from(spans).style(style)
}

fn list(frame: &mut Frame<'_>, app: &App, area: Rect, now_ms: u64) {
    let unread: u32 = app.conversations.iter().map(|c| c.unread).sum();
    let mut title = vec![Span::styled(" Chats ", theme::TITLE)];
    if unread > 0 {
        title.push(Span::styled(format!("· {unread} unread "), theme::DIM));
    }
    let block = pane(Line::from(title), app.focus == Focus::List);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if app.conversations.is_empty() {
        let hint = vec![
            Line::styled("No conversations yet.", theme::DIM),
            Line::default(),
            Line::styled("F2 or i: invite someone", theme::DIM),
        ];
        frame.render_widget(Paragraph::new(hint), inner);
        return;
    }
    let capacity = usize::from(inner.height / 2).max(1);
    let mut offset = app.list_offset.min(app.conversations.len().saturating_sub(capacity));
    if let Some(open) = app.open_index() {
        offset = offset.min(open).max((open + 1).saturating_sub(capacity));
    }
    let now = Local::new(now_ms, app.offset_minutes);
    let width = usize::from(inner.width);
    let mut lines = Vec::new();
    for c in app.conversations.iter().skip(offset).take(capacity) {
        let style = if app.open.as_deref() == Some(c.id.as_str()) { theme::LIST_SELECTED } else { Style::new() };
        lines.extend(list_item(c, app, now, width, style));
    }
    frame.render_widget(Paragraph::new(lines), inner);
}

fn list_item(c: &ConversationSummary, app: &App, now: Local, width: usize, style: Style) -> [Line<'static>; 2] {
    let name_style = if c.unread > 0 { theme::TITLE } else { Style::new() };
    let mut first = vec![Span::raw(" ")];
    if c.is_group {
        first.push(Span::styled("# ", theme::DIM));
    }
    first.push(Span::styled(one_line(&c.name), name_style));
    if c.key_changed {
        first.push(Span::styled(" !", theme::WARN));
    } else if c.verified {
        first.push(Span::styled(" ✔", theme::VERIFIED));
    }
    let when = c.last_at_ms.map(|t| clock::short(Local::new(t, app.offset_minutes), now)).unwrap_or_default();
    let first = spread(first, vec![Span::styled(when, theme::DIM), Span::raw(" ")], width, style);

    let typing = app.typing.get(&c.id).map(|(who, _)| who.clone()).or_else(|| c.typing.clone());
    let preview = match typing {
        Some(who) if c.is_group => Span::styled(format!("{} is typing…", one_line(&who)), theme::TYPING),
        Some(_) => Span::styled("typing…", theme::TYPING),
        None => Span::styled(one_line(&c.last_text), if c.unread > 0 { Style::new() } else { theme::DIM }),
    };
    let mut badge = Vec::new();
    if let Some(secs) = c.expire_secs {
        badge.push(Span::styled(format!("◷ {} ", clock::span(secs)), theme::DIM));
    }
    if c.unread > 0 {
        badge.push(Span::styled(format!(" {} ", c.unread.min(999)), theme::BADGE));
    }
    badge.push(Span::raw(" "));
    let second = spread(vec![Span::raw("   "), preview], badge, width, style);
    [first, second]
}

fn chat(frame: &mut Frame<'_>, app: &App, areas: &Areas, area: Rect, now_ms: u64) {
    let focused = app.focus == Focus::Messages;
    let Some(summary) = app.open_summary() else {
        let block = pane(Line::styled(" Tamizdat ", theme::TITLE), focused);
        let inner = block.inner(area);
        frame.render_widget(block, area);
        let hint = vec![
            Line::default(),
            Line::styled("No conversation open", theme::TITLE).centered(),
            Line::default(),
            Line::styled("↑ ↓ open one · Enter writes in it", theme::DIM).centered(),
            Line::styled("F2 invites someone · ? shows every key", theme::DIM).centered(),
        ];
        frame.render_widget(Paragraph::new(hint), inner);
        return;
    };
    let mut title = vec![Span::styled(format!(" {} ", one_line(&summary.name)), theme::TITLE)];
    if summary.key_changed {
        title.push(Span::styled("! safety number changed ", theme::WARN));
    } else if summary.verified {
        title.push(Span::styled("✔ verified ", theme::VERIFIED));
    }
    if let Some(secs) = summary.expire_secs {
        title.push(Span::styled(format!("◷ {} ", clock::span(secs)), theme::DIM));
    }
    let mut block = pane(Line::from(title), focused);
    let typing = app.typing.get(&summary.id).map(|(who, _)| who.clone()).or_else(|| summary.typing.clone());
    if let Some(who) = typing {
        let text =
            if summary.is_group { format!(" {} is typing… ", one_line(&who)) } else { " typing… ".to_owned() };
        block = block.title(Line::styled(text, theme::TYPING).right_aligned());
    }
    frame.render_widget(block, area);

    if let Some(banner) = areas.banner {
        let who = if summary.is_group { "A member's".to_owned() } else { format!("{}'s", one_line(&summary.name)) };
        let lines = vec![
            Line::from(format!(" ! {who} safety number changed.")),
            Line::from(" Compare safety numbers again before you trust new messages."),
        ];
        frame.render_widget(Paragraph::new(lines).style(theme::DANGER), banner);
    }
    if let Some(area) = areas.messages {
        messages(frame, app, area, now_ms);
    }
    if let Some(area) = areas.search {
        search(frame, app, area);
    }
}

fn messages(frame: &mut Frame<'_>, app: &App, area: Rect, now_ms: u64) {
    let rows = transcript::build(app, area.width, now_ms);
    if rows.lines.is_empty() {
        let hint = Line::styled("No messages yet. Say hello!", theme::DIM).centered();
        frame.render_widget(Paragraph::new(hint), Rect { y: area.y + area.height / 2, height: 1, ..area });
        return;
    }
    let total = rows.lines.len();
    let height = usize::from(area.height);
    let scroll = app.scroll.min(total.saturating_sub(height));
    let end = total - scroll;
    let start = end.saturating_sub(height);
    let blank = u16::try_from(height - (end - start)).unwrap_or(0);
    let shown: Vec<Line<'static>> = rows.lines[start..end].to_vec();
    let target = Rect { y: area.y + blank, height: area.height - blank, ..area };
    frame.render_widget(Paragraph::new(shown), target);
    if scroll > 0 {
        let hint = " ↓ newer messages below · End ";
        let w = u16::try_from(text::width(hint)).unwrap_or(0).min(area.width);
        let at = Rect { x: area.x + area.width - w, y: area.y + area.height - 1, width: w, height: 1 };
        frame.render_widget(Paragraph::new(Line::styled(hint, theme::NOTICE.add_modifier(Modifier::REVERSED))), at);
    }
}

fn search(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let Some(search) = &app.search else { return };
    let hits = app.search_hits();
    let count = match (search.current, hits.len()) {
        (_, 0) if search.query.is_empty() => String::new(),
        (_, 0) => "no match".to_owned(),
        (Some(i), n) => format!("{} of {n}", i + 1),
        (None, n) => format!("{n} matches"),
    };
    let help = if search.editing { "Enter keeps · Esc closes" } else { "n older · N newer · Esc clears" };
    let query = one_line(&search.query);
    let left = vec![Span::styled(" Search: ", theme::TITLE), Span::raw(query.clone())];
    let right = vec![Span::styled(format!("{count}  "), theme::NOTICE), Span::styled(format!("{help} "), theme::DIM)];
    frame.render_widget(Paragraph::new(spread(left, right, usize::from(area.width), Style::new())), area);
    if search.editing && app.popup.is_none() {
        let x = area.x + 9 + u16::try_from(text::width(&query)).unwrap_or(0);
        frame.set_cursor_position(Position { x: x.min(area.right().saturating_sub(1)), y: area.y });
    }
}

fn compose(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let focused = app.focus == Focus::Compose;
    let inner_width = usize::from(area.width.saturating_sub(4));
    let title = match &app.mode {
        Mode::Message => Line::styled(" Message ", theme::TITLE),
        Mode::Reply(id) => {
            let quoted = app.open_messages().iter().find(|m| &m.id == id).map(|m| {
                let who = if m.outgoing { "You".to_owned() } else { one_line(&m.sender) };
                format!("{who}: {}", one_line(&m.text))
            });
            let label = format!(" ↩ Reply to {} ", quoted.unwrap_or_default());
            Line::styled(truncate(&label, inner_width.saturating_sub(14)), theme::TITLE)
        }
        Mode::Edit(_) => Line::styled(" Edit message ", theme::TITLE),
        Mode::Attach => Line::styled(" Send a file ", theme::TITLE),
    };
    let hint = match (&app.mode, focused) {
        (Mode::Message, true) => " Enter sends · Alt-Enter new line ",
        (Mode::Message, false) => "",
        (Mode::Attach, _) => " Enter sends · Esc cancels ",
        (_, _) => " Esc cancels ",
    };
    let block = pane(title, focused)
        .title(Line::styled(hint, theme::DIM).right_aligned())
        .padding(ratatui::widgets::Padding::horizontal(1));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if inner.height == 0 || inner.width == 0 {
        return;
    }
    let (rows, (row, col)) = app.compose.rows(inner.width);
    // Rows above the cursor scroll away once the box is at its tallest.
    let skip = (row + 1).saturating_sub(usize::from(inner.height));
    if app.compose.text().is_empty() {
        let placeholder = match app.mode {
            Mode::Attach => "Path of the file, e.g. ~/Documents/menu.pdf",
            _ if focused => "Write a message",
            _ => "Write a message (Tab or click here)",
        };
        frame.render_widget(Paragraph::new(Line::styled(placeholder, theme::DIM)), inner);
    } else {
        let lines: Vec<Line<'static>> =
            rows.into_iter().skip(skip).map(|r| Line::raw(text::clean(&r).into_owned())).collect();
        frame.render_widget(Paragraph::new(lines), inner);
    }
    if focused && app.popup.is_none() {
        let y = inner.y + u16::try_from(row - skip).unwrap_or(0);
        frame.set_cursor_position(Position { x: inner.x + col.min(inner.width - 1), y });
    }
}

fn status(frame: &mut Frame<'_>, app: &App, area: Rect, now_ms: u64) {
    let s = &app.status;
    let now = Local::new(now_ms, app.offset_minutes);
    let at = |ms: u64| clock::short(Local::new(ms, app.offset_minutes), now);
    let endpoint = s.endpoint.as_deref().map(one_line).unwrap_or_default();
    let (badge, style, detail) = match &s.route {
        Route::Direct => (" DIRECT ".to_owned(), theme::ROUTE_OK, format!(" to {endpoint}")),
        Route::Bridge => (" BRIDGE ".to_owned(), theme::ROUTE_AROUND, format!(" via bridge {endpoint}")),
        Route::Proxy => (" PROXY ".to_owned(), theme::ROUTE_AROUND, format!(" via proxy {endpoint}")),
        Route::PluggableTransport(name) => (
            format!(" {} ", one_line(name).to_uppercase()),
            theme::ROUTE_AROUND,
            format!(" pluggable transport {endpoint}"),
        ),
        Route::Offline if s.syncing && s.last_ok_ms.is_none() => {
            (" CONNECTING ".to_owned(), theme::ROUTE_AROUND, " looking for a way to the relay".to_owned())
        }
        Route::Offline => (" OFFLINE ".to_owned(), theme::ROUTE_DOWN, " messages wait in the outbox".to_owned()),
    };
    let width = usize::from(area.width);
    let used = |spans: &[Span<'_>]| spans.iter().map(|s| text::width(&s.content)).sum::<usize>();
    let mut left = vec![Span::styled(badge, style)];
    let detail = Span::raw(detail.trim_end().to_owned());
    match &s.blocked {
        Some(blocked) => {
            let blocked = [
                Span::raw(" "),
                Span::styled(" BLOCKED ", theme::DANGER),
                Span::styled(format!(" {}", one_line(blocked)), theme::WARN),
            ];
            // On a narrow screen what is blocked matters more than the endpoint.
            if used(&left) + used(&blocked) + text::width(&detail.content) <= width {
                left.push(detail);
            }
            left.extend(blocked);
        }
        None => left.push(detail),
    }
    let sync = match (&s.route, s.syncing, s.last_ok_ms) {
        (Route::Offline, true, Some(_)) => Some(Span::raw(" · retrying…")),
        (Route::Offline, _, Some(t)) => Some(Span::styled(format!(" · last connected {}", at(t)), theme::DIM)),
        (Route::Offline, ..) => None,
        (_, true, _) => Some(Span::raw(" · syncing…")),
        (_, false, Some(t)) => Some(Span::styled(format!(" · up to date {}", at(t)), theme::DIM)),
        (_, false, None) => None,
    };
    // What is less important gives way whole: first the help hint, then the sync time.
    if let Some(sync) = sync
        && used(&left) + text::width(&sync.content) <= width
    {
        left.push(sync);
    }
    let help = Span::styled(" ? help ", theme::DIM);
    let right = if used(&left) + text::width(&help.content) < width { vec![help] } else { Vec::new() };
    frame.render_widget(Paragraph::new(spread(left, right, usize::from(area.width), theme::STATUS)), area);
}
