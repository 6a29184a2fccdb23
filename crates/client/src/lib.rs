#![doc = include_str!("../README.md")]

mod attachments;
mod chat;
mod codes;
mod engine;
mod groups;
mod paths;
pub mod relay;
pub mod store;
mod verify;

pub use attachments::{AttachmentView, CHUNK_SIZE, FileKind, SavedFile, guess_mime, safe_file_name};
pub use chat::{ConversationView, TypingView, format_timer};
pub use codes::is_invite_code;
pub use engine::{Client, ContactView, MessageView, ReactionView, ReplyView, SyncReport};
pub use groups::{GroupView, MemberView, SETTINGS};
pub use paths::{ConnectionStatus, EndpointView, FREEZE_BUDGET, NetOptions, doctor_link};
pub use tamizdat_transport::{diagnose::Report as DoctorReport, proxy::Proxy};
pub use tamizdat_wire::ErrorKind;
use tamizdat_wire::proto::ErrorCode;
pub use verify::{VerifyView, safety_number};

/// Errors of the client engine, each with what the user can do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No identity in this home directory.
    #[error("no Tamizdat identity in {0}; create one with `tamizdat init --name NAME --relay LINK`")]
    NotInitialised(String),
    /// An identity already exists.
    #[error("{0} already holds a Tamizdat identity; use another --home to create a second one")]
    AlreadyInitialised(String),
    /// The passphrase does not open the store.
    #[error("wrong passphrase: the local store did not open (nothing was changed)")]
    WrongPassphrase,
    /// The user's input is not acceptable.
    #[error("{0}")]
    BadInput(String),
    /// No contact or conversation by that name.
    #[error("no contact or group named {0:?}; `tamizdat contacts` and `tamizdat groups` list them")]
    UnknownContact(String),
    /// An invite was refused.
    #[error("{0}")]
    Invite(tamizdat_e2e::E2eError),
    /// The end-to-end layer failed.
    #[error("encryption: {0}")]
    E2e(#[from] tamizdat_e2e::E2eError),
    /// The relay could not be reached.
    #[error("relay unreachable: {0}")]
    Transport(#[from] tamizdat_transport::TransportError),
    /// The relay refused a request.
    #[error("the relay refused: {message}")]
    Relay {
        /// Its error code.
        code: ErrorCode,
        /// Its message.
        message: String,
        /// For stale commits: the relay's epoch.
        current_epoch: u64,
    },
    /// The relay broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A file that is damaged, changed, incomplete or gone on its relay.
    #[error("{0}")]
    BadAttachment(String),
    /// Undecodable bytes.
    #[error(transparent)]
    Wire(#[from] tamizdat_wire::WireError),
    /// Local storage failed.
    #[error("local storage: {0}")]
    Io(String),
    /// Local state is damaged.
    #[error("local state is damaged: {0}")]
    Corrupt(String),
    /// A contact's key changed and the user has not acknowledged it: nothing is sent to them.
    #[error("{0}")]
    KeyChanged(String),
    /// Saved locally but not yet delivered.
    #[error(
        "saved, but not delivered yet ({queued} waiting): {cause}; `tamizdat sync` delivers it once the relay is reachable"
    )]
    Undelivered {
        /// How many outbox entries wait.
        queued: usize,
        /// Why delivery failed.
        cause: Box<ClientError>,
    },
}

impl ClientError {
    /// What a user interface can do about it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClientError::NotInitialised(_)
            | ClientError::AlreadyInitialised(_)
            | ClientError::WrongPassphrase
            | ClientError::BadInput(_)
            | ClientError::UnknownContact(_)
            | ClientError::Invite(_)
            | ClientError::KeyChanged(_)
            | ClientError::BadAttachment(_) => ErrorKind::BadInput,
            ClientError::Transport(e) => e.kind(),
            ClientError::Relay { code: ErrorCode::Internal | ErrorCode::RateLimited, .. } => ErrorKind::Retry,
            ClientError::Relay { .. } | ClientError::Protocol(_) | ClientError::Wire(_) => ErrorKind::Fatal,
            ClientError::E2e(e) => e.kind(),
            ClientError::Io(_) | ClientError::Corrupt(_) => ErrorKind::Fatal,
            ClientError::Undelivered { cause, .. } => cause.kind(),
        }
    }
}

impl From<rusqlite::Error> for ClientError {
    fn from(e: rusqlite::Error) -> Self {
        ClientError::Io(e.to_string())
    }
}
