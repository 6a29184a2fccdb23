//! What the worker tells the TUI ([`Update`]) and what the TUI asks of the worker ([`Action`]),
//! with the plain data both carry. Nothing here does I/O or reads a clock.

use std::path::PathBuf;

/// One line of the conversation list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConversationSummary {
    /// Stable id the worker uses in [`Action`]s (e.g. the hex conversation id).
    pub id: String,
    /// What the user sees: the contact's or the group's name.
    pub name: String,
    /// Groups show each message's sender; 1:1 conversations show the contact's name.
    pub is_group: bool,
    /// Messages not yet read; the badge disappears when the conversation is opened.
    pub unread: u32,
    /// Preview of the last message, as the worker wants it shown (e.g. "You: see you").
    pub last_text: String,
    /// When the last message was sent, Unix milliseconds.
    pub last_at_ms: Option<u64>,
    /// Who is typing, if the worker tracks it here rather than with [`Update::Typing`].
    pub typing: Option<String>,
    /// The user compared safety numbers with this contact.
    pub verified: bool,
    /// The contact's key changed since it was last verified: shown as a loud banner.
    pub key_changed: bool,
    /// Disappearing-messages timer, seconds; `None` when messages stay.
    pub expire_secs: Option<u64>,
}

/// Where an outgoing message is, or that a message came in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MessageState {
    /// In the outbox, not yet accepted by the relay.
    Sending,
    /// The relay has it.
    Sent,
    /// The recipient's device has it.
    Delivered,
    /// The recipient read it.
    Read,
    /// It will not be sent (the user can retry).
    Failed,
    /// Someone else's message.
    #[default]
    Received,
}

/// What kind of row a message is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MessageKind {
    /// Text written by someone.
    #[default]
    Text,
    /// Something that happened (member joined, timer changed): shown centred, without sender.
    Event,
    /// A file; `attachment` says which.
    File,
}

/// The message a reply quotes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quote {
    /// Who wrote the quoted message.
    pub sender: String,
    /// The start of its text.
    pub snippet: String,
}

/// A file attached to a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attachment {
    /// File name as sent.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Already saved to disk (so "save" is not offered again).
    pub saved: bool,
}

/// One emoji and how many people reacted with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reaction {
    /// The emoji.
    pub emoji: String,
    /// How many reacted with it.
    pub count: u32,
    /// The user is one of them (shown highlighted).
    pub mine: bool,
}

/// One message of a conversation, in the order the worker gives them (oldest first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatMessage {
    /// Message id (hex), unique within the conversation.
    pub id: String,
    /// Display name of the sender ("You" is used for outgoing messages whatever this says).
    pub sender: String,
    /// The text; may hold newlines.
    pub text: String,
    /// When it was sent, Unix milliseconds.
    pub sent_at_ms: u64,
    /// Written by the user.
    pub outgoing: bool,
    /// Delivery state (outgoing) or `Received`.
    pub state: MessageState,
    /// The message this one answers.
    pub reply_to: Option<Quote>,
    /// Edited after it was sent.
    pub edited: bool,
    /// Deleted for everyone: only a tombstone is shown.
    pub deleted: bool,
    /// Reactions, in the order to show them.
    pub reactions: Vec<Reaction>,
    /// A file, for `MessageKind::File`.
    pub attachment: Option<Attachment>,
    /// Text, event or file.
    pub kind: MessageKind,
    /// When a disappearing message goes, Unix milliseconds; the TUI hides it from then on.
    pub expires_at_ms: Option<u64>,
}

/// How Tamizdat reaches its relay right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Route {
    /// Straight to the relay.
    Direct,
    /// Through a bridge (an unlisted relay entry point).
    Bridge,
    /// Through a SOCKS or HTTP proxy.
    Proxy,
    /// Through a pluggable transport, named (e.g. "obfs4", "snowflake").
    PluggableTransport(String),
    /// No way through at the moment; messages wait in the outbox.
    #[default]
    Offline,
}

/// The connection as the status line shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionStatus {
    /// The route in use.
    pub route: Route,
    /// The endpoint in use (host:port, bridge address, proxy URL).
    pub endpoint: Option<String>,
    /// What is being blocked and what Tamizdat does about it, e.g.
    /// "DNS tampered; using the IP endpoint".
    pub blocked: Option<String>,
    /// A sync is running (or, when offline, a connection is being tried).
    pub syncing: bool,
    /// When the relay last answered, Unix milliseconds.
    pub last_ok_ms: Option<u64>,
}

/// What the worker pushes to the TUI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// The whole conversation list, most recent first.
    Conversations(Vec<ConversationSummary>),
    /// The messages of one conversation (the window the worker loaded), oldest first.
    Messages {
        /// Conversation id.
        conversation: String,
        /// Its messages.
        messages: Vec<ChatMessage>,
    },
    /// One new or changed message (matched by id; a new one goes last).
    Message {
        /// Conversation id.
        conversation: String,
        /// The message.
        message: ChatMessage,
    },
    /// The connection changed.
    Status(ConnectionStatus),
    /// Someone is typing; shown for a few seconds.
    Typing {
        /// Conversation id.
        conversation: String,
        /// Display name of who types.
        who: String,
    },
    /// A fresh invite link, answer to [`Action::NewInvite`].
    Invite(String),
    /// Something worth a line (e.g. "saved to ~/Downloads/menu.pdf").
    Notice(String),
    /// Something failed; shown in red until it times out or Esc.
    Error(String),
}

/// What the TUI asks the worker to do. Sent with `try_send`: the TUI never waits for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The user opened a conversation: load its messages and mark them read. While it stays
    /// open, what arrives in it is on screen, so the worker marks that read too.
    Open(String),
    /// Send a message.
    Send {
        /// Conversation id.
        conversation: String,
        /// The text (may hold newlines).
        text: String,
        /// Id of the message answered.
        reply_to: Option<String>,
    },
    /// Replace the text of one of the user's messages.
    Edit {
        /// Conversation id.
        conversation: String,
        /// Message id.
        message: String,
        /// New text.
        text: String,
    },
    /// Delete one of the user's messages for everyone.
    Delete {
        /// Conversation id.
        conversation: String,
        /// Message id.
        message: String,
    },
    /// React to a message (reacting again with the same emoji takes it back).
    React {
        /// Conversation id.
        conversation: String,
        /// Message id.
        message: String,
        /// The emoji.
        emoji: String,
    },
    /// The user scrolled past the oldest message shown: answer with `Messages` that include
    /// older ones, if there are any. Asked once per oldest message.
    LoadOlder {
        /// Conversation id.
        conversation: String,
        /// Id of the oldest message the TUI has.
        before: String,
    },
    /// Send a message that failed again.
    Retry {
        /// Conversation id.
        conversation: String,
        /// Message id.
        message: String,
    },
    /// The user is typing here (sent at most once every few seconds).
    Typing(String),
    /// Send a file; the path is as typed (a leading `~` is the worker's to expand).
    SendFile {
        /// Conversation id.
        conversation: String,
        /// Path to the file.
        path: PathBuf,
    },
    /// Save a message's attachment.
    Save {
        /// Conversation id.
        conversation: String,
        /// Message id.
        message: String,
    },
    /// Make a new invite and answer with [`Update::Invite`].
    NewInvite,
    /// The user quit; the TUI has restored the terminal.
    Quit,
}
