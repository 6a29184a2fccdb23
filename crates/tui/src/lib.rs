#![doc = include_str!("../README.md")]

mod app;
mod clock;
mod commands;
mod compose;
mod event;
mod keys;
mod layout;
mod model;
mod popup;
mod runner;
mod text;
mod theme;
pub mod tmux;
mod transcript;
mod ui;

pub use app::{App, Focus};
pub use event::{Event, Key, KeyCode, Mouse, MouseKind};
pub use keys::{KEYS, REACTIONS};
pub use model::{
    Action, Attachment, ChatMessage, ConnectionStatus, ConversationSummary, MessageKind, MessageState, Quote, Reaction,
    Route, Update,
};
pub use runner::{Options, run, run_with};
pub use ui::draw;
