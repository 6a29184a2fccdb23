//! Files: encrypted with a key of their own, in chunks (STREAM: a chunk's nonce is its number
//! and a last-chunk flag, so chunks cannot be reordered, dropped or cut off unnoticed),
//! uploaded to the sender's relay piece by piece, and announced in the conversation once the
//! relay holds all of it. Receivers download, decrypt and hash chunk by chunk and save only a
//! file whose hash matches. Neither side ever holds more than a few chunks in memory.
//!
//! Encryption is deterministic for a given key, so an upload cut short is resumed from the
//! length the relay reports, re-encrypting the chunk it stopped in: every byte the relay gets is
//! the same whichever run sent it.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    str::FromStr,
};

use chacha20poly1305::{
    ChaCha20Poly1305, Key, KeyInit,
    aead::stream::{NewStream, StreamBE32, StreamPrimitive},
};
use ed25519_dalek::SigningKey;
use rand::RngCore;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tamizdat_e2e::content::{Attachment, AttachmentKind, Body, Content, MAX_ATTACHMENT, MAX_FILE_NAME, MAX_TEXT};
use tamizdat_wire::{
    limits::{ID_LEN, MAX_BLOB_PIECE},
    proto::{BlobStatus, CreateBlob, ErrorCode, GetBlob, Op, PutBlob, RelayDescriptor, Reply},
};

use crate::{
    Client, ClientError,
    engine::{
        ConvRow, MessageView, conv_by_id, enqueue_content, is_local_failure, load_conversation, now_ms, random_id,
        signing_key, to_i64, to_u64,
    },
    store::Provider,
};

/// Plaintext bytes per encrypted chunk: large enough that the 16-byte tags cost nothing, small
/// enough that a resumed upload or download redoes little.
pub const CHUNK_SIZE: u32 = 256 * 1024;
/// Poly1305 tag after every chunk.
const TAG_LEN: u64 = 16;
/// Associated data of every chunk: the construction's label.
const LABEL: &[u8] = b"tamizdat-file-v1";

/// What a file is, for how a front end shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// Any file.
    File,
    /// A picture.
    Image,
    /// A voice note.
    Voice,
}

impl FileKind {
    /// `file`, `image` or `voice`.
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::File => "file",
            FileKind::Image => "image",
            FileKind::Voice => "voice",
        }
    }

    /// A guess from the file name's extension.
    pub fn guess(name: &str) -> FileKind {
        match extension(name).as_str() {
            "jpg" | "jpeg" | "png" | "gif" | "webp" | "heic" | "heif" | "avif" | "bmp" | "tif" | "tiff" => {
                FileKind::Image
            }
            "ogg" | "oga" | "opus" | "m4a" | "aac" | "amr" | "weba" => FileKind::Voice,
            _ => FileKind::File,
        }
    }

    fn wire(self) -> AttachmentKind {
        match self {
            FileKind::File => AttachmentKind::File,
            FileKind::Image => AttachmentKind::Image,
            FileKind::Voice => AttachmentKind::Voice,
        }
    }
}

impl FromStr for FileKind {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "file" => Ok(FileKind::File),
            "image" => Ok(FileKind::Image),
            "voice" => Ok(FileKind::Voice),
            _ => Err(ClientError::BadInput(format!("{s:?} is no kind of file; use file, image or voice"))),
        }
    }
}

fn extension(name: &str) -> String {
    name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default()
}

/// A media type from the file name's extension; `application/octet-stream` when unknown.
pub fn guess_mime(name: &str) -> &'static str {
    match extension(name).as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "avif" => "image/avif",
        "bmp" => "image/bmp",
        "tif" | "tiff" => "image/tiff",
        "ogg" | "oga" => "audio/ogg",
        "opus" => "audio/opus",
        "m4a" => "audio/mp4",
        "aac" => "audio/aac",
        "amr" => "audio/amr",
        "weba" => "audio/webm",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "txt" => "text/plain",
        "md" => "text/markdown",
        "html" | "htm" => "text/html",
        "json" => "application/json",
        "odt" => "application/vnd.oasis.opendocument.text",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        _ => "application/octet-stream",
    }
}

/// A file attached to a message, as listed to the user.
#[derive(Clone, Debug, Serialize)]
pub struct AttachmentView {
    /// `file`, `image` or `voice`.
    pub kind: String,
    /// The sender's file name.
    pub name: String,
    /// Media type.
    pub mime: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// Bytes of the file the relay holds (all of them for received files).
    pub uploaded: u64,
    /// Where it was saved on this device, if it was.
    pub saved_path: Option<String>,
}

/// A file saved with [`Client::save`].
#[derive(Clone, Debug, Serialize)]
pub struct SavedFile {
    /// Where it is now.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256, hex: equal to what the sender announced.
    pub sha256: String,
}

/// The chunked encryption of one file: ChaCha20-Poly1305 in the STREAM construction (RustCrypto
/// `aead::stream`, big-endian 32-bit chunk counter and last-chunk flag in the nonce). The key is
/// fresh for every file, so the rest of the nonce is zero.
pub(crate) struct ChunkCipher {
    stream: StreamBE32<ChaCha20Poly1305>,
    size: u64,
    chunk: u64,
    chunks: u64,
}

impl ChunkCipher {
    /// The cipher for a file of `size` bytes in chunks of `chunk_size`. An empty file is one
    /// empty chunk, so even it carries a tag.
    pub(crate) fn new(key: &[u8], size: u64, chunk_size: u32) -> Result<Self, ClientError> {
        if key.len() != 32 || chunk_size == 0 {
            return Err(ClientError::BadAttachment("the file's key or chunk size is malformed".into()));
        }
        let chunk = u64::from(chunk_size);
        let chunks = size.div_ceil(chunk).max(1);
        if chunks > u64::from(u32::MAX) + 1 {
            return Err(ClientError::BadAttachment("the file has more chunks than its cipher can count".into()));
        }
        let aead = ChaCha20Poly1305::new(Key::from_slice(key));
        Ok(Self { stream: StreamBE32::from_aead(aead, &Default::default()), size, chunk, chunks })
    }

    pub(crate) fn chunks(&self) -> u64 {
        self.chunks
    }

    /// Plaintext bytes of chunk `i`.
    pub(crate) fn plain_len(&self, i: u64) -> u64 {
        if i + 1 < self.chunks { self.chunk } else { self.size - self.chunk * (self.chunks - 1) }
    }

    /// Encrypted bytes of chunk `i`.
    fn sealed_len(&self, i: u64) -> u64 {
        self.plain_len(i) + TAG_LEN
    }

    /// Where chunk `i` starts in the encrypted file.
    fn sealed_start(&self, i: u64) -> u64 {
        i * (self.chunk + TAG_LEN)
    }

    /// The length of the encrypted file: what the relay stores.
    pub(crate) fn encrypted_size(&self) -> u64 {
        self.size + self.chunks * TAG_LEN
    }

    /// Plaintext bytes whose encryption the first `encrypted` bytes hold (for progress).
    pub(crate) fn plain_within(&self, encrypted: u64) -> u64 {
        let per = self.chunk + TAG_LEN;
        (encrypted / per * self.chunk + (encrypted % per).min(self.chunk)).min(self.size)
    }

    fn position(&self, i: u64) -> Result<(u32, bool), ClientError> {
        let position = u32::try_from(i).map_err(|_| ClientError::BadAttachment("chunk number out of range".into()))?;
        Ok((position, i + 1 == self.chunks))
    }

    pub(crate) fn seal(&self, i: u64, plaintext: &[u8]) -> Result<Vec<u8>, ClientError> {
        let (position, last) = self.position(i)?;
        let mut buffer = Vec::with_capacity(plaintext.len() + TAG_LEN as usize);
        buffer.extend_from_slice(plaintext);
        self.stream
            .encrypt_in_place(position, last, LABEL, &mut buffer)
            .map_err(|_| ClientError::Corrupt("a chunk could not be encrypted".into()))?;
        Ok(buffer)
    }

    /// The plaintext of chunk `i`; an error if it was changed, moved or cut.
    pub(crate) fn open(&self, i: u64, sealed: &[u8]) -> Result<Vec<u8>, ClientError> {
        let (position, last) = self.position(i)?;
        let damaged = || ClientError::BadAttachment(format!("chunk {} of {} does not decrypt", i + 1, self.chunks));
        if sealed.len() as u64 != self.sealed_len(i) {
            return Err(damaged());
        }
        let mut buffer = sealed.to_vec();
        self.stream.decrypt_in_place(position, last, LABEL, &mut buffer).map_err(|_| damaged())?;
        Ok(buffer)
    }
}

/// The length of a file of `size` bytes once encrypted in chunks of `chunk_size`.
pub(crate) fn encrypted_size(size: u64, chunk_size: u32) -> u64 {
    size + size.div_ceil(u64::from(chunk_size.max(1))).max(1) * TAG_LEN
}

/// A file name from someone else, safe to create in a directory: no path separators, no
/// leading dots (no `..`, no hidden files), no control characters, nothing Windows refuses.
pub fn safe_file_name(name: &str) -> String {
    let cleaned: String =
        name.chars()
            .map(|c| {
                if c.is_control() || matches!(c, '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|') {
                    '_'
                } else {
                    c
                }
            })
            .collect();
    let trimmed = cleaned.trim().trim_start_matches('.').trim_end_matches(['.', ' ']).trim();
    if trimmed.is_empty() { "attachment".into() } else { trimmed.to_string() }
}

/// Printable text from someone else, for display.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

/// The longest prefix of `s` that fits in `max` bytes, cut at a character boundary.
fn truncated(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// A file's row: the message and its attachment.
struct FileRow {
    row: i64,
    conversation_id: i64,
    message_id: Vec<u8>,
    outgoing: bool,
    state: String,
    text: String,
    kind: String,
    name: String,
    mime: String,
    size: u64,
    sha256: Vec<u8>,
    relay_link: String,
    blob_id: Vec<u8>,
    key: Vec<u8>,
    chunk_size: u32,
    source_path: Option<String>,
    write_key: Option<Vec<u8>>,
}

fn file_row(conn: &Connection, row: i64) -> Result<FileRow, ClientError> {
    Ok(conn.query_row(
        "SELECT m.conversation_id, m.message_id, m.outgoing, m.state, m.text, a.kind, a.name, a.mime, a.size, a.sha256, a.relay_link, a.blob_id, a.content_key, a.chunk_size, a.source_path, a.write_key FROM messages m JOIN attachments a ON a.message_row = m.id WHERE m.id = ?1",
        [row],
        |r| {
            Ok(FileRow {
                row,
                conversation_id: r.get(0)?,
                message_id: r.get(1)?,
                outgoing: r.get(2)?,
                state: r.get(3)?,
                text: r.get(4)?,
                kind: r.get(5)?,
                name: r.get(6)?,
                mime: r.get(7)?,
                size: to_u64(r.get(8)?),
                sha256: r.get(9)?,
                relay_link: r.get(10)?,
                blob_id: r.get(11)?,
                key: r.get(12)?,
                chunk_size: u32::try_from(r.get::<_, i64>(13)?).unwrap_or(0),
                source_path: r.get(14)?,
                write_key: r.get(15)?,
            })
        },
    )?)
}

/// The attachment of a message, if it has one.
pub(crate) fn view(conn: &Connection, row: i64) -> Result<Option<AttachmentView>, ClientError> {
    type Row = (String, String, String, i64, Vec<u8>, i64, i64, Option<String>);
    let found: Option<Row> = conn
        .prepare_cached(
            "SELECT kind, name, mime, size, sha256, uploaded, chunk_size, saved_path FROM attachments WHERE message_row = ?1",
        )?
        .query_row([row], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
        })
        .optional()?;
    let Some((kind, name, mime, size, sha256, uploaded, chunk_size, saved_path)) = found else { return Ok(None) };
    let size = to_u64(size);
    let chunk_size = u32::try_from(chunk_size).unwrap_or(CHUNK_SIZE);
    let uploaded = ChunkCipher::new(&[0; 32], size, chunk_size).map(|c| c.plain_within(to_u64(uploaded))).unwrap_or(0);
    Ok(Some(AttachmentView { kind, name, mime, size, sha256: hex::encode(sha256), uploaded, saved_path }))
}

/// Records a file someone sent: the message (its text is the caption, or the file name) and the
/// attachment. `None` if this message id was stored before.
pub(crate) fn store_incoming(
    tx: &Connection,
    c: &ConvRow,
    sender: &[u8],
    seq: u64,
    (message_id, sent_at_ms): (&[u8], u64),
    a: &Attachment,
) -> Result<Option<i64>, ClientError> {
    let relay = a.relay.as_ref().ok_or_else(|| ClientError::BadInput("a file without its relay".into()))?;
    relay.validate().map_err(|e| ClientError::BadInput(format!("a file on a malformed relay: {e}")))?;
    let kind = match AttachmentKind::try_from(a.kind) {
        Ok(AttachmentKind::Image) => "image",
        Ok(AttachmentKind::Voice) => "voice",
        _ => "file",
    };
    let name = printable(&a.name);
    let name = if name.trim().is_empty() { "attachment".to_string() } else { name };
    let text = if a.caption.is_empty() { name.clone() } else { a.caption.clone() };
    let reply_to = (!a.reply_to.is_empty()).then_some(&a.reply_to);
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO messages (conversation_id, message_id, seq, outgoing, sender_key, kind, text, sent_at, state, reply_to) VALUES (?1, ?2, ?3, 0, ?4, 'file', ?5, ?6, 'received', ?7)",
        )?
        .execute(params![c.id, message_id, to_i64(seq), sender, text, to_i64(sent_at_ms), reply_to])?;
    if inserted == 0 {
        return Ok(None); // the same message id again: shown once
    }
    let row = tx.last_insert_rowid();
    tx.prepare_cached(
        "INSERT INTO attachments (message_row, kind, name, mime, size, sha256, relay_link, blob_id, content_key, chunk_size, uploaded) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        row,
        kind,
        name,
        printable(&a.mime),
        to_i64(a.size),
        a.sha256,
        relay.to_link(),
        a.blob_id,
        a.key,
        a.chunk_size,
        to_i64(encrypted_size(a.size, a.chunk_size)),
    ])?;
    Ok(Some(row))
}

/// A problem with a file on this device, named with its path.
fn file_error(path: &Path, e: std::io::Error) -> ClientError {
    ClientError::BadInput(format!("{}: {e}", path.display()))
}

/// SHA-256 and length of a file, read in pieces.
fn hash_file(path: &Path) -> Result<(Vec<u8>, u64), ClientError> {
    let mut file = File::open(path).map_err(|e| file_error(path, e))?;
    hash_prefix(&mut file, u64::MAX, path)
}

/// SHA-256 and length of the first `limit` bytes of `file`.
fn hash_prefix(file: &mut File, limit: u64, path: &Path) -> Result<(Vec<u8>, u64), ClientError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let mut reader = file.take(limit);
    loop {
        let n = reader.read(&mut buf).map_err(|e| file_error(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hasher.finalize().to_vec(), total))
}

impl Client {
    /// Sends a file to a contact or a group: hashes it, encrypts it with a fresh key, uploads it
    /// to our relay piece by piece and, once the relay holds all of it, sends the message that
    /// names it. `progress` hears (bytes uploaded, file size): first where the upload starts,
    /// then after every piece. If this is cut short, sending the same file to the same
    /// conversation again (or `sync`) goes on from where the relay stopped.
    pub async fn send_file(
        &mut self,
        to: &str,
        path: &Path,
        kind: Option<FileKind>,
        caption: Option<&str>,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<MessageView, ClientError> {
        let caption = caption.unwrap_or_default();
        if caption.len() > MAX_TEXT {
            return Err(ClientError::BadInput(format!(
                "the caption is {} bytes; the limit is {MAX_TEXT}",
                caption.len()
            )));
        }
        let c = self.conversation(to)?;
        if !c.active {
            return Err(ClientError::BadInput(format!("you are no longer in {to}")));
        }
        if let Some(warning) = crate::verify::unacknowledged_change(&self.conn, &c)? {
            return Err(ClientError::KeyChanged(warning));
        }
        let meta = std::fs::metadata(path).map_err(|e| file_error(path, e))?;
        if !meta.is_file() {
            return Err(ClientError::BadInput(format!("{} is not a file", path.display())));
        }
        if meta.len() > MAX_ATTACHMENT {
            return Err(ClientError::BadInput(format!(
                "{} is {} bytes; files can be at most {MAX_ATTACHMENT}",
                path.display(),
                meta.len()
            )));
        }
        let source = path.canonicalize().map_err(|e| file_error(path, e))?.to_string_lossy().into_owned();
        let pending: Option<i64> = self
            .conn
            .query_row(
                "SELECT m.id FROM messages m JOIN attachments a ON a.message_row = m.id WHERE m.conversation_id = ?1 AND m.outgoing = 1 AND a.source_path = ?2 AND m.state IN ('uploading', 'sending') ORDER BY m.id DESC LIMIT 1",
                params![c.id, source],
                |r| r.get(0),
            )
            .optional()?;
        let (row, fresh) = match pending {
            Some(row) => (row, false),
            None => (self.start_upload(&c, path, &source, meta.len(), kind, caption).await?, true),
        };
        self.finish_upload(row, fresh, &mut progress).await?;
        let flushed = self.flush_outbox().await;
        let view = self.message_by_row(row)?;
        match flushed {
            Err(e) if is_local_failure(&e) || view.state != "sent" => return Err(e),
            _ => {}
        }
        if let Err(e) = self.refresh_if_due(c.id).await {
            tracing::warn!(error = %e, "key refresh postponed");
        }
        Ok(view)
    }

    /// Creates the file's blob on our relay (first: a file the relay refuses is not hashed for
    /// nothing), hashes the file and records the message as uploading.
    async fn start_upload(
        &mut self,
        c: &ConvRow,
        path: &Path,
        source: &str,
        size: u64,
        kind: Option<FileKind>,
        caption: &str,
    ) -> Result<i64, ClientError> {
        let raw_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let name = truncated(&raw_name, MAX_FILE_NAME);
        let kind = kind.unwrap_or_else(|| FileKind::guess(&name));
        let mut key = vec![0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        let write_key = SigningKey::generate(&mut rand::rngs::OsRng);
        let link = self.profile.relay.to_link();
        let blob_id = self.create_blob(&link, &write_key, encrypted_size(size, CHUNK_SIZE), &name).await?;
        let (sha256, hashed) = hash_file(path)?;
        if hashed != size {
            return Err(ClientError::BadInput(format!("{} changed while it was read; try again", path.display())));
        }
        let tx = self.begin()?;
        let text = if caption.is_empty() { name.as_str() } else { caption };
        tx.execute(
            "INSERT INTO messages (conversation_id, message_id, outgoing, sender_key, kind, text, sent_at, state) VALUES (?1, ?2, 1, ?3, 'file', ?4, ?5, 'uploading')",
            params![c.id, random_id(), self.profile.identity_key, text, to_i64(now_ms())],
        )?;
        let row = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO attachments (message_row, kind, name, mime, size, sha256, relay_link, blob_id, content_key, chunk_size, source_path, write_key) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                row,
                kind.as_str(),
                name,
                guess_mime(&name),
                to_i64(size),
                sha256,
                link,
                blob_id,
                key,
                CHUNK_SIZE,
                source,
                write_key.to_bytes().to_vec()
            ],
        )?;
        tx.commit()?;
        Ok(row)
    }

    pub(crate) async fn create_blob(
        &mut self,
        link: &str,
        write_key: &SigningKey,
        size: u64,
        name: &str,
    ) -> Result<Vec<u8>, ClientError> {
        let op = Op::CreateBlob(CreateBlob { write_key: write_key.verifying_key().to_bytes().to_vec(), size });
        let mut created = self.call(link, op.clone(), Some(write_key)).await;
        if matches!(created, Err(ClientError::Relay { code: ErrorCode::RateLimited, .. })) {
            // This connection made as many blobs as the relay allows one connection: a new one
            // may make more.
            self.relays.remove(link);
            created = self.call(link, op, Some(write_key)).await;
        }
        match created {
            Ok(Reply::BlobCreated(b)) if b.blob_id.len() == ID_LEN => Ok(b.blob_id),
            Ok(_) => Err(ClientError::Protocol("expected BlobCreated".into())),
            Err(ClientError::Relay { code: ErrorCode::TooLarge, .. }) => {
                Err(ClientError::BadInput(format!("{name} is larger than your relay takes files")))
            }
            Err(e) => Err(e),
        }
    }

    /// Uploads what the relay does not hold yet, then puts the message naming the file in the
    /// outbox. `fresh`: the file was hashed just now, so it need not be checked again.
    async fn finish_upload(
        &mut self,
        row: i64,
        fresh: bool,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(), ClientError> {
        let f = file_row(&self.conn, row)?;
        if f.state != "uploading" {
            return Ok(()); // uploaded already; its message waits in the outbox
        }
        let cipher = ChunkCipher::new(&f.key, f.size, f.chunk_size)?;
        let total = cipher.encrypted_size();
        let write_key = signing_key(f.write_key.as_deref().unwrap_or_default())?;
        let source = PathBuf::from(f.source_path.clone().unwrap_or_default());
        let mut blob_id = f.blob_id.clone();
        let status = Op::BlobStatus(BlobStatus { blob_id: blob_id.clone() });
        let mut length = match self.call(&f.relay_link, status, None).await {
            Ok(Reply::BlobStored(s)) if s.size == total && s.length <= total => s.length,
            Ok(_) => return Err(ClientError::Protocol("the relay describes this file's blob wrongly".into())),
            // Retention deleted it (or the relay lost it): start again in a new one.
            Err(ClientError::Relay { code: ErrorCode::Unauthorized, .. }) => {
                blob_id = self.create_blob(&f.relay_link, &write_key, total, &f.name).await?;
                self.conn.execute(
                    "UPDATE attachments SET blob_id = ?1, uploaded = 0 WHERE message_row = ?2",
                    params![blob_id, row],
                )?;
                0
            }
            Err(e) => return Err(e),
        };
        if length < total && !fresh {
            // The key and nonces of this upload belong to the file as it was hashed.
            let unchanged = matches!(hash_file(&source), Ok((hash, size)) if hash == f.sha256 && size == f.size);
            if !unchanged {
                self.conn.execute("UPDATE messages SET state = 'failed' WHERE id = ?1", [row])?;
                return Err(ClientError::BadInput(format!(
                    "{} changed or went away since its upload began; that upload is dropped, send the file again",
                    source.display()
                )));
            }
        }
        progress(cipher.plain_within(length), f.size);
        if length < total {
            let mut file = File::open(&source).map_err(|e| file_error(&source, e))?;
            length = self.upload(&f, &cipher, &blob_id, &write_key, &mut file, length, progress).await?;
        }
        if length == total {
            self.complete_upload(row)?;
        }
        Ok(())
    }

    /// Sends the encrypted file from `from` to its end; returns the relay's final length.
    #[allow(clippy::too_many_arguments)]
    async fn upload(
        &mut self,
        f: &FileRow,
        cipher: &ChunkCipher,
        blob_id: &[u8],
        write_key: &SigningKey,
        file: &mut File,
        from: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<u64, ClientError> {
        let total = cipher.encrypted_size();
        let per = u64::from(f.chunk_size) + TAG_LEN;
        let source = PathBuf::from(f.source_path.clone().unwrap_or_default());
        let mut pos = from;
        // Encrypted bytes from `pos` on, not yet stored; the next chunk to encrypt; how much of
        // that chunk the relay already has.
        let mut pending: Vec<u8> = Vec::with_capacity(MAX_BLOB_PIECE + per as usize);
        let (mut next, mut skip) = (pos / per, pos % per);
        let mut plain = Vec::new();
        while pos < total {
            while pending.len() < MAX_BLOB_PIECE && next < cipher.chunks() {
                plain.resize(cipher.plain_len(next) as usize, 0);
                file.seek(SeekFrom::Start(next * u64::from(f.chunk_size)))
                    .and_then(|_| file.read_exact(&mut plain))
                    .map_err(|e| file_error(&source, e))?;
                let sealed = cipher.seal(next, &plain)?;
                pending.extend_from_slice(&sealed[skip as usize..]);
                (next, skip) = (next + 1, 0);
            }
            let n = pending.len().min(MAX_BLOB_PIECE);
            if n == 0 {
                return Err(ClientError::Corrupt("the upload ran out of data before its end".into()));
            }
            let op = Op::PutBlob(PutBlob { blob_id: blob_id.to_vec(), offset: pos, data: pending[..n].to_vec() });
            let Reply::BlobStored(stored) = self.call(&f.relay_link, op, Some(write_key)).await? else {
                return Err(ClientError::Protocol("expected BlobStored".into()));
            };
            if stored.length == pos + n as u64 {
                pending.drain(..n);
                pos = stored.length;
            } else if stored.length > pos && stored.length <= total {
                // Another run (a sync, an earlier try whose reply was lost) got further: the
                // bytes are the same, go on from there.
                pos = stored.length;
                pending.clear();
                (next, skip) = (pos / per, pos % per);
            } else {
                return Err(ClientError::Protocol(format!(
                    "the relay did not take the piece at {pos} (it reports {} bytes)",
                    stored.length
                )));
            }
            // `uploaded` counts encrypted bytes, as the relay does; views turn it into file bytes.
            self.conn
                .execute("UPDATE attachments SET uploaded = ?1 WHERE message_row = ?2", params![to_i64(pos), f.row])?;
            progress(cipher.plain_within(pos), f.size);
        }
        Ok(pos)
    }

    /// The relay holds the whole file: the message naming it goes into the outbox (once, even
    /// if two processes finished the same upload).
    fn complete_upload(&mut self, row: i64) -> Result<(), ClientError> {
        let tx = self.begin()?;
        let f = file_row(&tx, row)?;
        if f.state != "uploading" {
            return Ok(());
        }
        let c = conv_by_id(&tx, f.conversation_id)?;
        if !c.active {
            tx.execute("UPDATE messages SET state = 'failed' WHERE id = ?1", [row])?;
            tx.commit()?;
            return Err(ClientError::BadInput(format!("you are no longer in {}; the file was not sent", c.name)));
        }
        let kind = FileKind::from_str(&f.kind).unwrap_or(FileKind::File);
        let attachment = Attachment {
            kind: kind.wire() as i32,
            name: f.name.clone(),
            mime: f.mime.clone(),
            size: f.size,
            sha256: f.sha256.clone(),
            relay: Some(RelayDescriptor::from_link(&f.relay_link)?),
            blob_id: f.blob_id.clone(),
            key: f.key.clone(),
            chunk_size: f.chunk_size,
            caption: if f.text == f.name { String::new() } else { f.text.clone() },
            reply_to: Vec::new(),
        };
        // Sent when the file is all there: that is when the others can have it.
        let body = Content {
            message_id: f.message_id.clone(),
            sent_at_ms: now_ms(),
            body: Some(Body::Attachment(attachment)),
            expire_secs: c.expire_secs,
        };
        let provider = Provider::new(&tx);
        let mut conv = load_conversation(&provider, &c)?;
        let others = conv.members().len().saturating_sub(1);
        tx.execute(
            "UPDATE messages SET state = 'sending', sent_at = ?1, expires_at = ?2, recipients = ?3 WHERE id = ?4",
            params![
                to_i64(body.sent_at_ms),
                crate::chat::expiry(body.sent_at_ms, c.expire_secs),
                to_i64(others as u64),
                row
            ],
        )?;
        enqueue_content(&tx, &provider, &self.identity, &mut conv, &c, &body, Some(row))?;
        tx.execute("UPDATE conversations SET sent_since_update = sent_since_update + 1 WHERE id = ?1", [c.id])?;
        tx.commit()?;
        Ok(())
    }

    /// Goes on with uploads that were cut short (a sync step). Returns how many finished.
    pub(crate) async fn resume_uploads(&mut self) -> Result<usize, ClientError> {
        let rows: Vec<i64> = {
            let mut stmt = self.conn.prepare(
                "SELECT m.id FROM messages m JOIN attachments a ON a.message_row = m.id WHERE m.outgoing = 1 AND m.state = 'uploading' ORDER BY m.id",
            )?;
            stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?
        };
        let mut finished = 0;
        for row in rows {
            self.finish_upload(row, false, &mut |_, _| {}).await?;
            finished += 1;
        }
        Ok(finished)
    }

    /// Downloads the file of message `message_id` (hex), decrypting and hashing it chunk by
    /// chunk into `PATH.part`, and renames it to PATH once its SHA-256 matches what the sender
    /// announced. PATH defaults to the sender's file name (made safe) in the current directory;
    /// a directory means that name inside it. An existing file is never overwritten. A download
    /// cut short goes on from the chunks already in `PATH.part`. `progress` hears (bytes saved,
    /// file size).
    pub async fn save(
        &mut self,
        message_id: &str,
        path: Option<&Path>,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<SavedFile, ClientError> {
        let id = crate::chat::parse_id(message_id.trim())?;
        let row: Option<i64> = self
            .conn
            .query_row(
                "SELECT m.id FROM messages m JOIN attachments a ON a.message_row = m.id WHERE m.message_id = ?1 ORDER BY m.id DESC LIMIT 1",
                [&id],
                |r| r.get(0),
            )
            .optional()?;
        let row = row.ok_or_else(|| ClientError::BadInput(format!("no file in message {message_id}")))?;
        let f = file_row(&self.conn, row)?;
        if f.outgoing && f.state == "uploading" {
            return Err(ClientError::BadInput(format!(
                "{} has not finished uploading; sending it again or `tamizdat sync` finishes it",
                f.name
            )));
        }
        let name = safe_file_name(&f.name);
        let target = match path {
            Some(p) if p.is_dir() => p.join(&name),
            Some(p) => p.to_path_buf(),
            None => PathBuf::from(&name),
        };
        let target = std::path::absolute(&target).map_err(|e| file_error(&target, e))?;
        if target.symlink_metadata().is_ok() {
            return Err(ClientError::BadInput(format!(
                "{} exists already; give another path: tamizdat save {message_id} PATH",
                target.display()
            )));
        }
        let mut part = target.clone().into_os_string();
        part.push(".part");
        let part = PathBuf::from(part);
        let cipher = ChunkCipher::new(&f.key, f.size, f.chunk_size)?;
        let total = cipher.encrypted_size();
        let chunk = u64::from(f.chunk_size);

        // Whole chunks already saved stay (the hash covers them again); the last one is always
        // fetched again, so its end-of-file mark is checked.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part)
            .map_err(|e| file_error(&part, e))?;
        let had = file.metadata().map_err(|e| file_error(&part, e))?.len();
        let mut next = (had.min(f.size) / chunk).min(cipher.chunks() - 1);
        let kept = next * chunk;
        file.set_len(kept).map_err(|e| file_error(&part, e))?;
        file.seek(SeekFrom::Start(0)).map_err(|e| file_error(&part, e))?;
        let mut hasher = Sha256::new();
        {
            let mut buf = vec![0u8; 1 << 20];
            let mut reader = (&mut file).take(kept);
            loop {
                let n = reader.read(&mut buf).map_err(|e| file_error(&part, e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
        }
        file.seek(SeekFrom::Start(kept)).map_err(|e| file_error(&part, e))?;
        progress(kept, f.size);

        let mut pos = cipher.sealed_start(next);
        let mut buf: Vec<u8> = Vec::new();
        while next < cipher.chunks() {
            let need = cipher.sealed_len(next) as usize;
            while buf.len() < need {
                let op =
                    Op::GetBlob(GetBlob { blob_id: f.blob_id.clone(), offset: pos + buf.len() as u64, max_bytes: 0 });
                let data = match self.call(&f.relay_link, op, None).await {
                    Ok(Reply::BlobData(d)) => d,
                    Ok(_) => return Err(ClientError::Protocol("expected BlobData".into())),
                    Err(ClientError::Relay { code: ErrorCode::Unauthorized, .. }) => {
                        return Err(ClientError::BadAttachment(format!(
                            "the relay no longer has {} (relays keep files for a limited time)",
                            f.name
                        )));
                    }
                    Err(e) => return Err(e),
                };
                if data.size != total {
                    return Err(ClientError::BadAttachment(format!(
                        "the relay's copy of {} has {} bytes where it should have {total}; nothing was saved",
                        f.name, data.size
                    )));
                }
                if data.data.is_empty() {
                    return Err(ClientError::BadAttachment(format!(
                        "the relay holds only {} of {total} bytes of {}; nothing was saved",
                        data.length, f.name
                    )));
                }
                buf.extend_from_slice(&data.data);
            }
            let plain = cipher.open(next, &buf[..need]).map_err(|e| {
                ClientError::BadAttachment(format!(
                    "{} was changed or damaged on the relay ({e}); nothing was saved",
                    f.name
                ))
            })?;
            file.write_all(&plain).map_err(|e| ClientError::Io(format!("{}: {e}", part.display())))?;
            hasher.update(&plain);
            buf.drain(..need);
            pos += need as u64;
            next += 1;
            progress((next * chunk).min(f.size), f.size);
        }
        file.sync_all().map_err(|e| ClientError::Io(format!("{}: {e}", part.display())))?;
        drop(file);
        let digest = hasher.finalize().to_vec();
        if digest != f.sha256 {
            let _ = std::fs::remove_file(&part);
            return Err(ClientError::BadAttachment(format!(
                "{} does not match the SHA-256 its sender announced; nothing was saved",
                f.name
            )));
        }
        place(&part, &target)?;
        let saved = target.to_string_lossy().into_owned();
        self.conn.execute("UPDATE attachments SET saved_path = ?1 WHERE message_row = ?2", params![saved, row])?;
        Ok(SavedFile { path: saved, size: f.size, sha256: hex::encode(digest) })
    }
}

/// Moves the finished `.part` file to `target` without replacing anything there: a hard link
/// fails if the name is taken (a file system without hard links gets a checked rename).
fn place(part: &Path, target: &Path) -> Result<(), ClientError> {
    let taken = || {
        ClientError::BadInput(format!("{} appeared meanwhile; the file stays in {}", target.display(), part.display()))
    };
    match std::fs::hard_link(part, target) {
        Ok(()) => {
            let _ = std::fs::remove_file(part);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(taken()),
        Err(_) if target.symlink_metadata().is_ok() => Err(taken()),
        Err(_) => std::fs::rename(part, target).map_err(|e| file_error(target, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher(size: u64, chunk: u32) -> ChunkCipher {
        ChunkCipher::new(&[7; 32], size, chunk).unwrap()
    }

    fn seal_all(c: &ChunkCipher, data: &[u8]) -> Vec<Vec<u8>> {
        (0..c.chunks())
            .map(|i| {
                let start = (i * c.chunk) as usize;
                c.seal(i, &data[start..start + c.plain_len(i) as usize]).unwrap()
            })
            .collect()
    }

    #[test]
    fn chunks_round_trip_at_every_size() {
        for size in [0u64, 1, 99, 100, 101, 250, 300] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 % 256) as u8).collect();
            let c = cipher(size, 100);
            let sealed = seal_all(&c, &data);
            assert_eq!(sealed.iter().map(|s| s.len() as u64).sum::<u64>(), c.encrypted_size(), "size {size}");
            assert_eq!(c.encrypted_size(), encrypted_size(size, 100));
            let opened: Vec<u8> = sealed.iter().enumerate().flat_map(|(i, s)| c.open(i as u64, s).unwrap()).collect();
            assert_eq!(opened, data);
            // Sealing is deterministic: a resumed upload sends the same bytes.
            assert_eq!(seal_all(&c, &data), sealed);
        }
    }

    #[test]
    fn tampering_reordering_and_truncation_are_caught() {
        let data = vec![5u8; 250];
        let c = cipher(250, 100);
        let sealed = seal_all(&c, &data);
        let mut flipped = sealed[1].clone();
        flipped[3] ^= 1;
        assert!(c.open(1, &flipped).is_err(), "a changed byte");
        assert!(c.open(0, &sealed[1]).is_err(), "chunks swapped");
        // Cut after two chunks: the second was not sealed as the last one.
        let short = cipher(200, 100);
        assert!(short.open(1, &sealed[1]).is_err(), "truncated at a chunk boundary");
        // The last chunk presented as a middle one.
        let longer = cipher(350, 100);
        assert!(longer.open(2, &sealed[2]).is_err());
        assert!(c.open(2, &sealed[2][..10]).is_err(), "a chunk cut short");
        let other = ChunkCipher::new(&[8; 32], 250, 100).unwrap();
        assert!(other.open(0, &sealed[0]).is_err(), "another key");
    }

    #[test]
    fn progress_counts_plaintext() {
        let c = cipher(250, 100);
        assert_eq!(c.plain_within(0), 0);
        assert_eq!(c.plain_within(116), 100);
        assert_eq!(c.plain_within(150), 134);
        assert_eq!(c.plain_within(c.encrypted_size()), 250);
    }

    #[test]
    fn names_from_others_cannot_leave_the_directory() {
        assert_eq!(safe_file_name("report.pdf"), "report.pdf");
        assert_eq!(safe_file_name("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(safe_file_name(".."), "attachment");
        assert_eq!(safe_file_name(".bashrc"), "bashrc");
        assert_eq!(safe_file_name("a\\b\u{1b}[31m.txt"), "a_b_[31m.txt");
        assert_eq!(safe_file_name("  "), "attachment");
        assert_eq!(safe_file_name("C:evil. "), "C_evil");
    }

    #[test]
    fn kinds_and_types_are_guessed_from_the_extension() {
        assert_eq!(FileKind::guess("cat.JPG"), FileKind::Image);
        assert_eq!(FileKind::guess("note.opus"), FileKind::Voice);
        assert_eq!(FileKind::guess("report.pdf"), FileKind::File);
        assert_eq!(FileKind::guess("README"), FileKind::File);
        assert_eq!(guess_mime("cat.jpeg"), "image/jpeg");
        assert_eq!(guess_mime("x.unknown"), "application/octet-stream");
    }
}
