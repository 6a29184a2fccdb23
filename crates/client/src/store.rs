//! The client's encrypted store: one SQLCipher database holding the app's tables and the
//! OpenMLS state, keyed from the passphrase with Argon2id. MLS storage is trusted by
//! OpenMLS (integrity is not rechecked on load), so it must be encrypted at rest.

use std::{fs, path::Path};

use argon2::{Algorithm, Argon2, Params, Version};
use openmls_rust_crypto::RustCrypto;
use openmls_sqlite_storage::{Codec, SqliteStorageProvider};
use openmls_traits::OpenMlsProvider;
use rand::RngCore;
use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::ClientError;

const KEYFILE: &str = "keyfile.json";
const KEYFILE_NEW: &str = "keyfile.json.new";
const DATABASE: &str = "tamizdat.db";

/// Argon2id parameters: 64 MiB, 3 passes, 1 lane (RFC 9106's second recommended option,
/// scaled to a phone-sized memory budget).
const KDF_MEMORY_KIB: u32 = 64 * 1024;
const KDF_PASSES: u32 = 3;
const KDF_LANES: u32 = 1;

/// How the database key is derived; kept next to the database, in the clear (it holds no
/// secret).
#[derive(Serialize, Deserialize)]
struct KeyFile {
    version: u32,
    kdf: String,
    memory_kib: u32,
    passes: u32,
    lanes: u32,
    salt: String,
}

/// serde_json as the codec of OpenMLS values.
#[derive(Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    type Error = serde_json::Error;

    fn to_vec<T: Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        serde_json::to_vec(value)
    }

    fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        serde_json::from_slice(slice)
    }
}

/// OpenMLS provider whose storage is the encrypted database.
pub struct Provider<'a> {
    crypto: RustCrypto,
    storage: SqliteStorageProvider<JsonCodec, &'a Connection>,
}

impl<'a> Provider<'a> {
    /// A provider over this connection.
    pub fn new(conn: &'a Connection) -> Self {
        Self { crypto: RustCrypto::default(), storage: SqliteStorageProvider::new(conn) }
    }
}

impl<'a> OpenMlsProvider for Provider<'a> {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = SqliteStorageProvider<JsonCodec, &'a Connection>;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }
    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }
    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}

/// Derives the 32-byte database key from the passphrase.
fn derive_key(passphrase: &str, kf: &KeyFile) -> Result<Zeroizing<[u8; 32]>, ClientError> {
    let salt = hex::decode(&kf.salt).map_err(|_| ClientError::Corrupt("the key file's salt is damaged".into()))?;
    let params = Params::new(kf.memory_kib, kf.passes, kf.lanes, Some(32))
        .map_err(|e| ClientError::Corrupt(format!("the key file's parameters are invalid: {e}")))?;
    let mut key = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase.as_bytes(), &salt, key.as_mut())
        .map_err(|e| ClientError::Corrupt(format!("key derivation failed: {e}")))?;
    Ok(key)
}

/// True if `home` already holds a Tamizdat identity.
pub fn exists(home: &Path) -> bool {
    home.join(KEYFILE).exists()
}

/// Creates a new encrypted store in `home`.
pub fn create(home: &Path, passphrase: &str) -> Result<Connection, ClientError> {
    if exists(home) {
        return Err(ClientError::AlreadyInitialised(home.display().to_string()));
    }
    if passphrase.is_empty() {
        return Err(ClientError::BadInput(
            "the passphrase is empty; choose one (TAMIZDAT_PASSPHRASE or the prompt)".into(),
        ));
    }
    fs::create_dir_all(home).map_err(|e| ClientError::Io(format!("{}: {e}", home.display())))?;
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let kf = KeyFile {
        version: 1,
        kdf: "argon2id".into(),
        memory_kib: KDF_MEMORY_KIB,
        passes: KDF_PASSES,
        lanes: KDF_LANES,
        salt: hex::encode(salt),
    };
    let key = derive_key(passphrase, &kf)?;
    // Leftovers of an init that did not finish.
    for stale in [DATABASE, "tamizdat.db-wal", "tamizdat.db-shm", KEYFILE_NEW] {
        let _ = fs::remove_file(home.join(stale));
    }
    let mut conn = open_keyed(&home.join(DATABASE), &key)?;
    migrate(&mut conn)?;
    let json = serde_json::to_vec_pretty(&kf).map_err(|e| ClientError::Io(e.to_string()))?;
    // The key file's presence means "initialised": it is written under a temporary name and
    // renamed by `finish_create` once the caller has stored the profile.
    fs::write(home.join(KEYFILE_NEW), json).map_err(|e| ClientError::Io(e.to_string()))?;
    Ok(conn)
}

/// Marks a store created with [`create`] as complete.
pub fn finish_create(home: &Path) -> Result<(), ClientError> {
    fs::rename(home.join(KEYFILE_NEW), home.join(KEYFILE)).map_err(|e| ClientError::Io(e.to_string()))
}

/// Opens the store in `home`; a wrong passphrase is reported as such.
pub fn open(home: &Path, passphrase: &str) -> Result<Connection, ClientError> {
    let raw = fs::read(home.join(KEYFILE)).map_err(|_| ClientError::NotInitialised(home.display().to_string()))?;
    let kf: KeyFile =
        serde_json::from_slice(&raw).map_err(|_| ClientError::Corrupt(format!("{KEYFILE} is damaged")))?;
    if kf.kdf != "argon2id" {
        return Err(ClientError::Corrupt(format!("unknown key derivation {:?}", kf.kdf)));
    }
    let key = derive_key(passphrase, &kf)?;
    let mut conn = open_keyed(&home.join(DATABASE), &key)?;
    migrate(&mut conn)?;
    Ok(conn)
}

fn open_keyed(path: &Path, key: &[u8; 32]) -> Result<Connection, ClientError> {
    let conn = Connection::open(path).map_err(|e| ClientError::Io(format!("{}: {e}", path.display())))?;
    let pragma = Zeroizing::new(format!("PRAGMA key = \"x'{}'\";", hex::encode(key)));
    conn.execute_batch(&pragma).map_err(|e| ClientError::Io(e.to_string()))?;
    // Keying activates SQLCipher's logging to stderr; a wrong passphrase would print its own
    // lines there. The user gets our one-line error instead.
    for quiet in ["PRAGMA cipher_log = off", "PRAGMA cipher_log_level = NONE"] {
        let _ = conn.query_row(quiet, [], |_| Ok(()));
    }
    // The first read tells a wrong key apart: SQLCipher cannot decrypt page 1.
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)) {
        Ok(_) => {}
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::NotADatabase => {
            return Err(ClientError::WrongPassphrase);
        }
        Err(e) => return Err(ClientError::Io(e.to_string())),
    }
    conn.execute_batch(
        // secure_delete: deleted and disappearing messages are overwritten, not left in free pages.
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=10000; PRAGMA secure_delete=ON;",
    )
    .map_err(|e| ClientError::Io(e.to_string()))?;
    Ok(conn)
}

const SCHEMA_V1: &str = "
CREATE TABLE profile (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    name TEXT NOT NULL,
    identity_key BLOB NOT NULL,
    suite INTEGER NOT NULL,
    relay_link TEXT NOT NULL,
    queue_read_id BLOB NOT NULL,
    queue_send_id BLOB NOT NULL,
    queue_secret BLOB NOT NULL,
    queue_cursor INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE invites (
    invite_id BLOB PRIMARY KEY,
    box_private BLOB NOT NULL,
    expires_at INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE accepted_invites (invite_id BLOB PRIMARY KEY);
CREATE TABLE contacts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    named_by_user INTEGER NOT NULL DEFAULT 0,
    identity_key BLOB NOT NULL,
    group_id BLOB NOT NULL UNIQUE,
    joined_epoch INTEGER NOT NULL,
    relay_link TEXT NOT NULL,
    log_id BLOB NOT NULL,
    log_secret BLOB NOT NULL,
    cursor_id BLOB NOT NULL,
    cursor INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    contact_id INTEGER NOT NULL REFERENCES contacts(id),
    message_id BLOB NOT NULL,
    seq INTEGER,
    outgoing INTEGER NOT NULL,
    text TEXT NOT NULL,
    sent_at INTEGER NOT NULL,
    state TEXT NOT NULL,
    UNIQUE (contact_id, message_id)
);
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    relay_link TEXT NOT NULL,
    target BLOB NOT NULL,
    target_secret BLOB,
    kind TEXT NOT NULL CHECK (kind IN ('log', 'queue')),
    dedup_id BLOB NOT NULL UNIQUE,
    payload BLOB NOT NULL,
    message_row INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE own_entries (
    contact_id INTEGER NOT NULL,
    dedup_id BLOB NOT NULL,
    PRIMARY KEY (contact_id, dedup_id)
);
";

/// Version 2: conversations apart from contacts (a contact has a 1:1 conversation; groups have
/// members), membership events, KeyPackages handed to and received from contacts, group invite
/// parts, and membership changes waiting for the relay (intents).
const SCHEMA_V2: &str = "
CREATE TABLE conversations (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
    name TEXT UNIQUE,
    contact_id INTEGER,
    group_id BLOB NOT NULL UNIQUE,
    joined_epoch INTEGER NOT NULL,
    relay_link TEXT NOT NULL,
    log_id BLOB NOT NULL,
    log_secret BLOB NOT NULL,
    cursor_id BLOB NOT NULL,
    cursor INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'left', 'removed')),
    sent_since_update INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
INSERT INTO conversations (id, kind, contact_id, group_id, joined_epoch, relay_link, log_id, log_secret, cursor_id, cursor, updated_at, created_at)
    SELECT id, 'direct', id, group_id, joined_epoch, relay_link, log_id, log_secret, cursor_id, cursor, created_at, created_at FROM contacts;
CREATE TABLE contacts_v2 (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    named_by_user INTEGER NOT NULL DEFAULT 0,
    identity_key BLOB NOT NULL,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id),
    created_at INTEGER NOT NULL
);
INSERT INTO contacts_v2 SELECT id, name, named_by_user, identity_key, id, created_at FROM contacts;
CREATE TABLE messages_v2 (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id),
    message_id BLOB NOT NULL,
    seq INTEGER,
    outgoing INTEGER NOT NULL,
    sender_key BLOB,
    kind TEXT NOT NULL DEFAULT 'text' CHECK (kind IN ('text', 'event')),
    text TEXT NOT NULL,
    sent_at INTEGER NOT NULL,
    state TEXT NOT NULL,
    UNIQUE (conversation_id, message_id)
);
INSERT INTO messages_v2 (id, conversation_id, message_id, seq, outgoing, text, sent_at, state)
    SELECT id, contact_id, message_id, seq, outgoing, text, sent_at, state FROM messages;
CREATE TABLE own_entries_v2 (
    conversation_id INTEGER NOT NULL,
    dedup_id BLOB NOT NULL,
    PRIMARY KEY (conversation_id, dedup_id)
);
INSERT INTO own_entries_v2 SELECT contact_id, dedup_id FROM own_entries;
DROP TABLE messages;
DROP TABLE own_entries;
DROP TABLE contacts;
ALTER TABLE contacts_v2 RENAME TO contacts;
ALTER TABLE messages_v2 RENAME TO messages;
ALTER TABLE own_entries_v2 RENAME TO own_entries;
CREATE INDEX contacts_by_key ON contacts (identity_key);
CREATE TABLE members (
    conversation_id INTEGER NOT NULL,
    identity_key BLOB NOT NULL,
    name TEXT NOT NULL,
    departed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, identity_key)
);
CREATE TABLE own_key_packages (
    hash_ref BLOB PRIMARY KEY,
    contact_id INTEGER NOT NULL,
    suite INTEGER NOT NULL,
    last_resort INTEGER NOT NULL,
    created_at INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE peer_key_packages (
    id INTEGER PRIMARY KEY,
    contact_id INTEGER NOT NULL,
    suite INTEGER NOT NULL,
    last_resort INTEGER NOT NULL,
    key_package BLOB NOT NULL
);
CREATE TABLE invite_parts (
    contact_id INTEGER NOT NULL,
    invite_id BLOB NOT NULL,
    part INTEGER NOT NULL,
    parts INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (contact_id, invite_id, part)
);
CREATE TABLE intents (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('add', 'remove', 'update')),
    keys TEXT NOT NULL,
    key_packages TEXT NOT NULL DEFAULT '[]',
    cursor_ids TEXT NOT NULL DEFAULT '[]',
    commit_bytes BLOB,
    welcome BLOB,
    dedup_id BLOB,
    not_before INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
ALTER TABLE outbox ADD COLUMN conversation_id INTEGER;
ALTER TABLE outbox ADD COLUMN content BLOB;
";

/// Version 3: ways to reach relays. Endpoints learned for a relay (a bridge link, a PT bridge
/// line) beyond the ones its links carry; which endpoint worked last on which network; which
/// networks freeze busy connections.
const SCHEMA_V3: &str = "
CREATE TABLE relay_endpoints (
    relay_pin BLOB NOT NULL,
    endpoint TEXT NOT NULL,
    added_at INTEGER NOT NULL,
    PRIMARY KEY (relay_pin, endpoint)
);
CREATE TABLE paths (
    relay_pin BLOB NOT NULL,
    network TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    last_ok INTEGER NOT NULL,
    PRIMARY KEY (relay_pin, network, endpoint)
);
CREATE TABLE networks (network TEXT PRIMARY KEY, freeze_seen INTEGER);
";

/// Version 4: daily use. Messages gain replies, edits, deletion for everyone, disappearing
/// timers, read marks and files; receipts and reactions per member; attachments with their
/// upload progress; contacts gain verification and key-change marks; conversations gain their
/// disappearing timer and who is typing. Messages that arrived before count as read.
const SCHEMA_V4: &str = "
CREATE TABLE messages_v4 (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id),
    message_id BLOB NOT NULL,
    seq INTEGER,
    outgoing INTEGER NOT NULL,
    sender_key BLOB,
    kind TEXT NOT NULL DEFAULT 'text' CHECK (kind IN ('text', 'event', 'file')),
    text TEXT NOT NULL,
    sent_at INTEGER NOT NULL,
    state TEXT NOT NULL,
    reply_to BLOB,
    edited_at INTEGER,
    deleted INTEGER NOT NULL DEFAULT 0,
    expires_at INTEGER,
    read_at INTEGER,
    recipients INTEGER,
    UNIQUE (conversation_id, message_id)
);
INSERT INTO messages_v4 (id, conversation_id, message_id, seq, outgoing, sender_key, kind, text, sent_at, state, read_at)
    SELECT id, conversation_id, message_id, seq, outgoing, sender_key, kind, text, sent_at, state,
        CASE WHEN outgoing = 0 THEN sent_at END FROM messages;
DROP TABLE messages;
ALTER TABLE messages_v4 RENAME TO messages;
CREATE INDEX messages_expiring ON messages (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX messages_unread ON messages (conversation_id) WHERE read_at IS NULL AND outgoing = 0;
CREATE TABLE receipts (
    message_row INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    member_key BLOB NOT NULL,
    delivered_at INTEGER,
    read_at INTEGER,
    PRIMARY KEY (message_row, member_key)
);
CREATE TABLE reactions (
    message_row INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    member_key BLOB NOT NULL,
    emoji TEXT NOT NULL,
    PRIMARY KEY (message_row, member_key)
);
CREATE TABLE attachments (
    message_row INTEGER PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('file', 'image', 'voice')),
    name TEXT NOT NULL,
    mime TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 BLOB NOT NULL,
    relay_link TEXT NOT NULL,
    blob_id BLOB NOT NULL,
    content_key BLOB NOT NULL,
    chunk_size INTEGER NOT NULL,
    source_path TEXT,
    uploaded INTEGER NOT NULL DEFAULT 0,
    saved_path TEXT
);
ALTER TABLE contacts ADD COLUMN verified INTEGER NOT NULL DEFAULT 0;
ALTER TABLE contacts ADD COLUMN key_changed_at INTEGER;
ALTER TABLE contacts ADD COLUMN previous_key BLOB;
ALTER TABLE conversations ADD COLUMN expire_secs INTEGER NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN typing_key BLOB;
ALTER TABLE conversations ADD COLUMN typing_until INTEGER NOT NULL DEFAULT 0;
";

/// Version 5: an attachment being uploaded keeps the key that signs its pieces, so an upload
/// cut short goes on from where the relay stopped, in this process or the next.
const SCHEMA_V5: &str = "
ALTER TABLE attachments ADD COLUMN write_key BLOB;
";

fn migrate(conn: &mut Connection) -> Result<(), ClientError> {
    SqliteStorageProvider::<JsonCodec, &mut Connection>::new(&mut *conn)
        .run_migrations()
        .map_err(|e| ClientError::Io(format!("MLS storage migration: {e}")))?;
    let version: i64 =
        conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| ClientError::Io(e.to_string()))?;
    for (target, schema) in [(1, SCHEMA_V1), (2, SCHEMA_V2), (3, SCHEMA_V3), (4, SCHEMA_V4), (5, SCHEMA_V5)] {
        if version >= target {
            continue;
        }
        // Tables are rebuilt while their references point at each other: foreign keys are
        // checked once the rebuild is complete (and cannot be switched inside a transaction).
        conn.execute_batch("PRAGMA foreign_keys = OFF").map_err(|e| ClientError::Io(e.to_string()))?;
        let tx = conn.unchecked_transaction().map_err(|e| ClientError::Io(e.to_string()))?;
        tx.execute_batch(schema).map_err(|e| ClientError::Io(e.to_string()))?;
        let broken: Option<String> = tx
            .query_row("PRAGMA foreign_key_check", [], |r| r.get(0))
            .optional()
            .map_err(|e| ClientError::Io(e.to_string()))?;
        if let Some(table) = broken {
            return Err(ClientError::Corrupt(format!("upgrading the store left dangling rows in {table}")));
        }
        tx.execute_batch(&format!("PRAGMA user_version = {target}")).map_err(|e| ClientError::Io(e.to_string()))?;
        tx.commit().map_err(|e| ClientError::Io(e.to_string()))?;
        conn.execute_batch("PRAGMA foreign_keys = ON").map_err(|e| ClientError::Io(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store made by the first version (one conversation per contact) upgrades without losing
    /// a contact, a message or a cursor.
    #[test]
    fn version_one_stores_upgrade() {
        let mut conn = Connection::open_in_memory().unwrap();
        SqliteStorageProvider::<JsonCodec, &mut Connection>::new(&mut conn).run_migrations().unwrap();
        conn.execute_batch(SCHEMA_V1).unwrap();
        conn.execute_batch(
            "PRAGMA user_version = 1;
             INSERT INTO contacts (id, name, identity_key, group_id, joined_epoch, relay_link, log_id, log_secret, cursor_id, cursor, created_at)
                 VALUES (7, 'Bob', x'01', x'02', 1, 'tamizdat:relay/x', x'03', x'04', x'05', 42, 1000);
             INSERT INTO messages (contact_id, message_id, seq, outgoing, text, sent_at, state) VALUES (7, x'06', 3, 0, 'hi', 5, 'received');
             INSERT INTO own_entries (contact_id, dedup_id) VALUES (7, x'08');",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, 5);
        let (name, conv): (String, i64) = conn
            .query_row("SELECT name, conversation_id FROM contacts WHERE id = 7", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert_eq!((name.as_str(), conv), ("Bob", 7));
        let (kind, contact, cursor): (String, i64, i64) = conn
            .query_row("SELECT kind, contact_id, cursor FROM conversations WHERE id = 7", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!((kind.as_str(), contact, cursor), ("direct", 7, 42));
        let text: String =
            conn.query_row("SELECT text FROM messages WHERE conversation_id = 7", [], |r| r.get(0)).unwrap();
        assert_eq!(text, "hi");
        let own: i64 =
            conn.query_row("SELECT count(*) FROM own_entries WHERE conversation_id = 7", [], |r| r.get(0)).unwrap();
        assert_eq!(own, 1);
        // Upgrading again is a no-op.
        migrate(&mut conn).unwrap();
    }
}
