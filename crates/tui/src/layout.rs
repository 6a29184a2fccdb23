//! Where everything goes on the screen. Used by drawing and by the key and mouse handling
//! (scrolling by pages, clicks), so both agree.

use ratatui::layout::Rect;

use crate::app::{App, Focus};

/// Below this width one pane is shown at a time.
pub(crate) const NARROW: u16 = 60;
/// The compose box grows up to this many rows of text.
const COMPOSE_ROWS: usize = 5;

/// The screen's parts; `None` for what is not shown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Areas {
    /// The conversation list, with its border.
    pub(crate) list: Option<Rect>,
    /// The open conversation, with its border (header in the title).
    pub(crate) chat: Option<Rect>,
    /// The safety-number warning inside `chat`.
    pub(crate) banner: Option<Rect>,
    /// The message rows inside `chat`.
    pub(crate) messages: Option<Rect>,
    /// The search line inside `chat`.
    pub(crate) search: Option<Rect>,
    /// The compose box, with its border.
    pub(crate) compose: Option<Rect>,
    /// The notice or error line.
    pub(crate) notice: Option<Rect>,
    /// The connection status line, at the bottom.
    pub(crate) status: Rect,
}

fn take_bottom(area: &mut Rect, rows: u16) -> Rect {
    let rows = rows.min(area.height);
    area.height -= rows;
    Rect { y: area.y + area.height, height: rows, ..*area }
}

fn take_top(area: &mut Rect, rows: u16) -> Rect {
    let rows = rows.min(area.height);
    let top = Rect { height: rows, ..*area };
    area.y += rows;
    area.height -= rows;
    top
}

pub(crate) fn areas(app: &App, screen: Rect) -> Areas {
    let mut rest = screen;
    let mut areas = Areas { status: take_bottom(&mut rest, 1), ..Areas::default() };
    if app.notice.is_some() {
        areas.notice = Some(take_bottom(&mut rest, 1));
    }
    let chat_open = app.open.is_some();
    let (list, chat) = if rest.width >= NARROW {
        let list_width = (rest.width / 10 * 3).clamp(24, 34);
        let list = Rect { width: list_width, ..rest };
        (Some(list), Rect { x: rest.x + list_width, width: rest.width - list_width, ..rest })
    } else if app.focus == Focus::List || !chat_open {
        return Areas { list: Some(rest), ..areas };
    } else {
        (None, rest)
    };
    areas.list = list;
    let mut chat = chat;
    if chat_open {
        let inner_width = chat.width.saturating_sub(4);
        let rows = app.compose.rows(inner_width).0.len().clamp(1, COMPOSE_ROWS);
        areas.compose = Some(take_bottom(&mut chat, u16::try_from(rows).unwrap_or(1) + 2));
    }
    areas.chat = Some(chat);
    if !chat_open {
        return areas;
    }
    let mut inner = Rect {
        x: chat.x + 1,
        y: chat.y + 1,
        width: chat.width.saturating_sub(2),
        height: chat.height.saturating_sub(2),
    };
    if app.open_summary().is_some_and(|c| c.key_changed) {
        areas.banner = Some(take_top(&mut inner, 2));
    }
    if app.search.is_some() {
        areas.search = Some(take_bottom(&mut inner, 1));
    }
    areas.messages = Some(inner);
    areas
}
