//! The terminal loop: crossterm setup and teardown, and one `select!` over terminal events,
//! the worker's updates and a clock tick. Nothing in it waits on the worker or the network:
//! actions go out with `try_send`.

use std::{
    io::{self, Stdout},
    sync::{
        Mutex, Once,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, ThreadId},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crossterm::{
    event::{DisableBracketedPaste, DisableMouseCapture, EnableBracketedPaste, EnableMouseCapture, EventStream},
    execute,
    terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode},
};
use futures_util::StreamExt;
use ratatui::{Terminal, backend::CrosstermBackend};
use tokio::sync::mpsc::{self, error::TrySendError};

use crate::{
    App, Event,
    model::{Action, Update},
    ui,
};

/// How often typing indicators, notices and disappearing messages age.
const TICK: Duration = Duration::from_secs(1);
/// Updates applied before one redraw, so a burst costs one frame.
const BATCH: usize = 64;

/// How the TUI starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Take the mouse (click, wheel). Selecting text with the mouse then needs Shift held.
    pub mouse: bool,
    /// Times are shown at this offset from UTC, minutes.
    pub utc_offset_minutes: i32,
}

impl Default for Options {
    fn default() -> Self {
        Options { mouse: true, utc_offset_minutes: 0 }
    }
}

/// True while the terminal is in the TUI's state, so the panic hook knows to restore it.
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// The thread running the TUI loop's code right now: a panic there restores the terminal
/// before the message is printed; a panic in the worker does not (the TUI goes on and says
/// the worker stopped).
static TUI_THREAD: Mutex<Option<ThreadId>> = Mutex::new(None);
static HOOK: Once = Once::new();

fn on_this_thread() {
    if let Ok(mut tui) = TUI_THREAD.lock() {
        *tui = Some(thread::current().id());
    }
}

/// Runs the TUI with default [`Options`] until the user quits (the worker gets
/// [`Action::Quit`]).
pub async fn run(updates: mpsc::Receiver<Update>, actions: mpsc::Sender<Action>) -> io::Result<()> {
    run_with(Options::default(), updates, actions).await
}

/// Runs the TUI until the user quits. The terminal is restored on return, on error and on
/// panic.
pub async fn run_with(
    options: Options,
    mut updates: mpsc::Receiver<Update>,
    actions: mpsc::Sender<Action>,
) -> io::Result<()> {
    let _guard = Guard::enter(options.mouse)?;
    let mut terminal = Terminal::new(CrosstermBackend::new(io::stdout()))?;
    terminal.clear()?;
    let mut app = App::new().with_utc_offset(options.utc_offset_minutes);
    let size = terminal.size()?;
    app.handle_event(Event::Resize(size.width, size.height), now_ms());
    let mut events = EventStream::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut worker_gone = false;
    loop {
        on_this_thread();
        draw(&mut terminal, &app)?;
        let input = tokio::select! {
            event = events.next() => Input::Terminal(event),
            update = updates.recv(), if !worker_gone => Input::Worker(update.map(Box::new)),
            _ = tick.tick() => Input::Tick,
        };
        on_this_thread();
        let out = match input {
            Input::Terminal(Some(Ok(event))) => match Event::from_crossterm(event) {
                Some(event) => app.handle_event(event, now_ms()),
                None => continue,
            },
            Input::Terminal(Some(Err(e))) => return Err(e),
            Input::Terminal(None) => return Ok(()),
            Input::Worker(Some(update)) => {
                app.apply(*update);
                for _ in 1..BATCH {
                    match updates.try_recv() {
                        Ok(update) => app.apply(update),
                        Err(_) => break,
                    }
                }
                Vec::new()
            }
            Input::Worker(None) => {
                worker_gone = true;
                app.apply(Update::Error("The background worker stopped; Ctrl-Q quits".into()));
                Vec::new()
            }
            Input::Tick => app.handle_event(Event::Tick, now_ms()),
        };
        if let Some(text) = app.take_clipboard() {
            execute!(io::stdout(), crossterm::clipboard::CopyToClipboard::to_clipboard_from(text))?;
        }
        for action in out {
            if action == Action::Quit {
                let _ = actions.try_send(Action::Quit);
                return Ok(());
            }
            match actions.try_send(action) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    app.apply(Update::Error("Busy: that was not done; try again in a moment".into()));
                }
                Err(TrySendError::Closed(_)) => {
                    app.apply(Update::Error("The background worker stopped; Ctrl-Q quits".into()));
                }
            }
        }
    }
}

/// What woke the loop.
enum Input {
    Terminal(Option<io::Result<crossterm::event::Event>>),
    Worker(Option<Box<Update>>),
    Tick,
}

fn draw(terminal: &mut Terminal<CrosstermBackend<Stdout>>, app: &App) -> io::Result<()> {
    let now = now_ms();
    terminal.draw(|frame| ui::draw(frame, app, now))?;
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The terminal in raw mode on the alternate screen; put back on drop.
struct Guard;

impl Guard {
    fn enter(mouse: bool) -> io::Result<Guard> {
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let ours = TUI_THREAD.lock().ok().and_then(|tui| *tui) == Some(thread::current().id());
                if ours && ACTIVE.load(Ordering::SeqCst) {
                    restore();
                }
                previous(info);
            }));
        });
        enable_raw_mode()?;
        ACTIVE.store(true, Ordering::SeqCst);
        let mut out = io::stdout();
        execute!(out, EnterAlternateScreen, EnableBracketedPaste)?;
        if mouse {
            execute!(out, EnableMouseCapture)?;
        }
        Ok(Guard)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        restore();
    }
}

/// Leaves the TUI's terminal state; safe to call twice.
fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = execute!(
            io::stdout(),
            DisableMouseCapture,
            DisableBracketedPaste,
            LeaveAlternateScreen,
            crossterm::cursor::Show
        );
        let _ = disable_raw_mode();
    }
}
