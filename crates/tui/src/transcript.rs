//! The open conversation as rows of styled text: day separators, then each message as a
//! block (header with sender, time and delivery tick; quoted reply; wrapped body; file;
//! reactions), the user's own on the right. Each row remembers its message, so scrolling,
//! selection and clicks work in rows.

use std::ops::Range;

use ratatui::{
    style::Style,
    text::{Line, Span},
};

use crate::{
    app::App,
    clock::{self, Local},
    model::{ChatMessage, MessageKind, MessageState},
    text::{self, clean, find_all, one_line, truncate, wrap},
    theme,
};

/// Messages from the same sender closer than this are not spaced apart.
const RUN_MS: u64 = 5 * 60_000;

/// Rows of the open conversation, and which message each belongs to.
#[derive(Debug, Default)]
pub(crate) struct Transcript {
    pub(crate) lines: Vec<Line<'static>>,
    pub(crate) owner: Vec<Option<usize>>,
}

impl Transcript {
    fn push(&mut self, line: Line<'static>, owner: Option<usize>) {
        self.lines.push(line);
        self.owner.push(owner);
    }
}

/// The open conversation's rows at `width` columns.
pub(crate) fn build(app: &App, width: u16, now_ms: u64) -> Transcript {
    let mut out = Transcript::default();
    let width = usize::from(width);
    let is_group = app.open_summary().is_some_and(|c| c.is_group);
    let query = app.search.as_ref().map(|s| s.query.as_str()).filter(|q| !q.is_empty());
    let selected = app.selected_index();
    let today = Local::new(now_ms, app.offset_minutes).day();
    let mut prev: Option<&ChatMessage> = None;
    for (i, m) in app.open_messages().iter().enumerate() {
        let day = Local::new(m.sent_at_ms, app.offset_minutes).day();
        if prev.is_none_or(|p| Local::new(p.sent_at_ms, app.offset_minutes).day() != day) {
            if prev.is_some() {
                out.push(Line::default(), None);
            }
            out.push(rule(&clock::day_label(day, today), width), None);
        } else if prev.is_some_and(|p| starts_run(p, m)) {
            out.push(Line::default(), None);
        }
        let rows = if m.kind == MessageKind::Event {
            event_rows(m, width, app.offset_minutes)
        } else {
            message_rows(m, is_group, width, query, now_ms, app.offset_minutes)
        };
        for row in rows {
            let row = if selected == Some(i) { select(row, width) } else { row };
            out.push(row, Some(i));
        }
        prev = Some(m);
    }
    out
}

fn starts_run(prev: &ChatMessage, m: &ChatMessage) -> bool {
    prev.outgoing != m.outgoing
        || prev.sender != m.sender
        || prev.kind == MessageKind::Event
        || m.kind == MessageKind::Event
        || m.sent_at_ms.saturating_sub(prev.sent_at_ms) > RUN_MS
}

/// "──── Today ────" across the width.
fn rule(label: &str, width: usize) -> Line<'static> {
    let label = format!(" {label} ");
    let side = width.saturating_sub(text::width(&label)) / 2;
    let line = format!("{}{label}{}", "─".repeat(side), "─".repeat(width.saturating_sub(side + text::width(&label))));
    Line::styled(line, theme::DIM)
}

fn event_rows(m: &ChatMessage, width: usize, offset: i32) -> Vec<Line<'static>> {
    let body = format!("{} · {}", clean(&m.text), Local::new(m.sent_at_ms, offset).hhmm());
    wrap(&body, width.saturating_sub(4))
        .into_iter()
        .map(|r| {
            let row = &body[r];
            let pad = width.saturating_sub(text::width(row)) / 2;
            Line::from(vec![Span::raw(" ".repeat(pad)), Span::styled(row.to_owned(), theme::EVENT)])
        })
        .collect()
}

/// The tick after an outgoing message's time.
pub(crate) fn tick(state: MessageState) -> Span<'static> {
    match state {
        MessageState::Sending => Span::styled("…", theme::DIM),
        MessageState::Sent => Span::styled("✓", theme::TICK),
        MessageState::Delivered => Span::styled("✓✓", theme::TICK),
        MessageState::Read => Span::styled("✓✓", theme::TICK_READ),
        MessageState::Failed => Span::styled("! failed", theme::WARN),
        MessageState::Received => Span::raw(""),
    }
}

/// "2.1 MB".
pub(crate) fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value < 10.0 { format!("{value:.1} {}", UNITS[unit]) } else { format!("{value:.0} {}", UNITS[unit]) }
}

type Row = Vec<Span<'static>>;

fn row_width(row: &Row) -> usize {
    row.iter().map(|s| text::width(&s.content)).sum()
}

fn message_rows(
    m: &ChatMessage,
    is_group: bool,
    width: usize,
    query: Option<&str>,
    now_ms: u64,
    offset: i32,
) -> Vec<Line<'static>> {
    let body_width = (width * 3 / 4).max(width.min(24)).saturating_sub(2).max(1);
    let mut rows: Vec<Row> = Vec::new();

    let mut header: Row = Vec::new();
    if m.outgoing {
        header.push(Span::styled("You", theme::ME));
    } else {
        let name = truncate(&one_line(&m.sender), body_width.saturating_sub(8));
        let style = if is_group { theme::sender(&name) } else { theme::TITLE };
        header.push(Span::styled(name, style));
    }
    header.push(Span::styled(format!("  {}", Local::new(m.sent_at_ms, offset).hhmm()), theme::DIM));
    if m.edited && !m.deleted {
        header.push(Span::styled(" · edited", theme::DIM));
    }
    if let Some(at) = m.expires_at_ms {
        header.push(Span::styled(format!(" · ◷ {}", clock::span(at.saturating_sub(now_ms) / 1000)), theme::DIM));
    }
    if m.outgoing {
        header.push(Span::raw(" "));
        header.push(tick(m.state));
    }
    rows.push(header);

    if let Some(quote) = m.reply_to.as_ref().filter(|_| !m.deleted) {
        let who = one_line(&quote.sender);
        let quoted = truncate(&format!("{who}: {}", one_line(&quote.snippet)), body_width.saturating_sub(2));
        rows.push(vec![Span::styled("▎ ", theme::sender(&who)), Span::styled(quoted, theme::QUOTE)]);
    }

    if m.deleted {
        rows.push(vec![Span::styled("This message was deleted", theme::DELETED)]);
    } else {
        let body = clean(&m.text);
        if !(body.is_empty() && m.attachment.is_some()) {
            let hits = query.map(|q| find_all(&body, q)).unwrap_or_default();
            for range in wrap(&body, body_width) {
                rows.push(highlight(&body, range, &hits));
            }
        }
        if let Some(file) = &m.attachment {
            let name = truncate(&one_line(&file.name), body_width.saturating_sub(20).max(8));
            let saved = if file.saved { " · saved" } else { " · s saves it" };
            rows.push(vec![
                Span::raw("📎 "),
                Span::styled(name, theme::TITLE),
                Span::styled(format!(" · {}{saved}", size(file.size)), theme::DIM),
            ]);
        }
        if !m.reactions.is_empty() {
            let mut row: Row = Vec::new();
            for (k, r) in m.reactions.iter().enumerate() {
                if k > 0 {
                    row.push(Span::raw("  "));
                }
                let style = if r.mine { theme::MARK } else { Style::new() };
                row.push(Span::styled(format!("{} {}", one_line(&r.emoji), r.count), style));
            }
            rows.push(row);
        }
        if m.outgoing && m.state == MessageState::Failed {
            rows.push(vec![Span::styled("not sent · select it, Enter retries", theme::WARN)]);
        }
    }

    let block = rows.iter().map(row_width).max().unwrap_or(0).min(width.saturating_sub(2));
    let indent = if m.outgoing { width.saturating_sub(block + 1) } else { 1 };
    // The block's rows are left-aligned; the user's own block sits against the right edge.
    rows.into_iter()
        .map(|mut row| {
            row.insert(0, Span::raw(" ".repeat(indent)));
            Line::from(row)
        })
        .collect()
}

/// Spans of one wrapped row of `body`, with search hits marked.
fn highlight(body: &str, row: Range<usize>, hits: &[Range<usize>]) -> Row {
    let mut spans = Vec::new();
    let mut at = row.start;
    for hit in hits {
        let (start, end) = (hit.start.max(row.start), hit.end.min(row.end));
        if start >= end {
            continue;
        }
        if start > at {
            spans.push(Span::raw(body[at..start].to_owned()));
        }
        spans.push(Span::styled(body[start..end].to_owned(), theme::HIT));
        at = end;
    }
    if at < row.end || spans.is_empty() {
        spans.push(Span::raw(body[at..row.end].to_owned()));
    }
    spans
}

/// Marks a selected message's row: a bar in the first column and a shaded background.
fn select(line: Line<'static>, width: usize) -> Line<'static> {
    let mut spans: Vec<Span<'static>> = line.spans;
    if let Some(first) = spans.first_mut()
        && first.content.starts_with(' ')
    {
        let rest = first.content[1..].to_owned();
        *first = Span::raw(rest);
    }
    let used: usize = spans.iter().map(|s| text::width(&s.content)).sum::<usize>() + 1;
    spans.push(Span::raw(" ".repeat(width.saturating_sub(used))));
    let mut out = vec![Span::styled("▌", theme::MARK)];
    out.extend(spans.into_iter().map(|s| {
        let style = s.style.bg(s.style.bg.unwrap_or(theme::SELECTED_BG));
        Span::styled(s.content, style)
    }));
    Line::from(out)
}
