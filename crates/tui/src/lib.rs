#![doc = include_str!("../README.md")]

mod clock;
mod compose;
mod event;
mod model;
mod text;

pub use event::{Event, Key, KeyCode, Mouse, MouseKind};
pub use model::{
    Action, Attachment, ChatMessage, ConnectionStatus, ConversationSummary, MessageKind, MessageState, Quote,
    Reaction, Route, Update,
};
