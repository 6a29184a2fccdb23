//! The relay's storage: one SQL code path (sqlx `Any`) with per-backend migrations.
//!
//! Every write goes through one writer task that batches whatever is waiting into a single
//! transaction (group commit): one fsync covers many clients, and nobody is answered before
//! the transaction that holds their write is durable.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use sqlx::{
    Any, AnyConnection, AnyPool, Connection, Row,
    any::{AnyArguments, AnyPoolOptions, AnyRow},
};
use tamizdat_wire::{
    mls::{ContentType, MlsHeader},
    proto::Entry,
};
use tokio::sync::{mpsc, oneshot};

use crate::{
    RelayError,
    hub::{Listener, NoticeHub},
};

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 1024;
/// Most messages waiting in one queue; past it, senders are told to slow down.
pub const QUEUE_QUOTA: i64 = 10_000;

/// A write, applied in a group-committed transaction.
#[derive(Debug)]
pub enum Write {
    /// A new queue.
    CreateQueue {
        /// Reader's id.
        read_id: Vec<u8>,
        /// Sender's id.
        send_id: Vec<u8>,
        /// Reader's public key.
        read_key: Vec<u8>,
    },
    /// A message into a queue, by its send id.
    SendToQueue {
        /// Sender's id.
        send_id: Vec<u8>,
        /// Client-chosen id that makes retries harmless.
        dedup_id: Vec<u8>,
        /// Opaque sealed payload.
        payload: Vec<u8>,
        /// Coarse arrival time.
        hour: i64,
    },
    /// The reader is done with messages up to `up_to`.
    AckQueue {
        /// Reader's id.
        read_id: Vec<u8>,
        /// Last sequence number handled.
        up_to: u64,
    },
    /// A new conversation log.
    CreateLog {
        /// Log id.
        log_id: Vec<u8>,
        /// Members' shared public key.
        log_key: Vec<u8>,
    },
    /// An MLS message into a log.
    Append {
        /// Log id.
        log_id: Vec<u8>,
        /// Client-chosen id that makes retries harmless.
        dedup_id: Vec<u8>,
        /// The MLS message.
        payload: Vec<u8>,
        /// Its cleartext header.
        header: MlsHeader,
        /// Coarse arrival time.
        hour: i64,
    },
    /// A reader's cursor moves forward; entries every cursor passed are deleted.
    AckLog {
        /// Log id.
        log_id: Vec<u8>,
        /// Reader's cursor id.
        cursor_id: Vec<u8>,
        /// Last sequence number handled.
        up_to: u64,
    },
    /// A new blob of `size` bytes, empty so far.
    CreateBlob {
        /// Blob id.
        blob_id: Vec<u8>,
        /// The uploader's public key.
        write_key: Vec<u8>,
        /// Its final length.
        size: u64,
        /// Coarse creation time: retention counts from here.
        hour: i64,
    },
    /// Bytes of a blob at `offset`; stored only if `offset` is the blob's stored length.
    PutBlob {
        /// Blob id.
        blob_id: Vec<u8>,
        /// Where the bytes go.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Deletes everything that arrived (blobs: were created) before `before_hour`.
    Expire {
        /// Cut-off.
        before_hour: i64,
    },
}

/// What a write did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Applied.
    Done,
    /// Stored (or found stored already) at this sequence number.
    Stored {
        /// Sequence number.
        seq: u64,
        /// The log's epoch after this entry (logs only).
        epoch: u64,
        /// The same dedup id was stored before: nothing new was written.
        duplicate: bool,
    },
    /// A commit for an epoch that already has one.
    StaleEpoch {
        /// The log's current epoch.
        current: u64,
    },
    /// No such id.
    NotFound,
    /// The queue is full.
    QueueFull,
    /// A blob's stored length (after this write) and final size.
    Blob {
        /// Bytes stored.
        length: u64,
        /// Final size.
        size: u64,
    },
    /// Refused for a reason the client should hear.
    Refused(&'static str),
}

pub(crate) struct Job {
    pub(crate) write: Write,
    pub(crate) reply: oneshot::Sender<Result<Outcome, RelayError>>,
    /// When it was handed to the writer, for the write latency histogram.
    pub(crate) queued: Instant,
}

/// The group-commit writer; await [`WriterTask::finished`] for a clean shutdown.
pub struct WriterTask(tokio::task::JoinHandle<()>);

impl WriterTask {
    /// Waits until the writer committed everything it was handed and closed the database.
    pub async fn finished(self) {
        let _ = self.0.await;
    }
}

/// Something new was stored under `id` (a log id, or a queue's read id) at `seq`. An empty
/// `id` means "notices may have been lost": every subscriber should look again.
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    /// Log id or queue read id.
    pub id: Vec<u8>,
    /// The new entry's sequence number.
    pub seq: u64,
    /// The entry itself, when it is small enough to push and was stored by this node; one
    /// allocation shared by every subscriber.
    pub entry: Option<Arc<Entry>>,
    /// When the write behind it was handed to this node's writer, for the notice latency
    /// histogram; unknown for notices from other nodes.
    pub queued: Option<Instant>,
}

impl Notice {
    /// A notice without the entry: "look at `id`".
    pub fn bare(id: Vec<u8>, seq: u64) -> Self {
        Notice { id, seq, entry: None, queued: None }
    }

    /// A notice for an entry just stored, carrying it if it is small.
    pub(crate) fn stored(id: &[u8], seq: u64, dedup_id: &[u8], payload: &[u8], hour: i64) -> Self {
        let entry = (payload.len() <= tamizdat_wire::limits::MAX_PUSHED_PAYLOAD).then(|| {
            Arc::new(Entry { seq, dedup_id: dedup_id.to_vec(), payload: payload.to_vec(), received_hour: to_u64(hour) })
        });
        Notice { id: id.to_vec(), seq, entry, queued: None }
    }
}

/// The PostgreSQL channel on which every node announces committed entries.
const NOTIFY_CHANNEL: &str = "tamizdat_relay";

/// Handle to the relay's database.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// Where reads run when they must not run on the caller's thread; see
    /// [`Store::reading_on`].
    reads_on: Option<tokio::runtime::Handle>,
    writer: mpsc::Sender<Job>,
    hub: Arc<NoticeHub>,
}

/// A read query whose text and arguments it owns, so it can run on another runtime.
type Read = sqlx::query::Query<'static, Any, AnyArguments>;

/// A write handed to the writer, in order; resolves once its batch is durable.
pub struct Commit(oneshot::Receiver<Result<Outcome, RelayError>>);

impl Future for Commit {
    type Output = Result<Outcome, RelayError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| r.unwrap_or(Err(RelayError::ShuttingDown)))
    }
}

const SQLITE_MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_initial.sql")),
    (2, include_str!("../migrations/sqlite/0002_blobs.sql")),
];
const POSTGRES_MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_initial.sql")),
    (2, include_str!("../migrations/postgres/0002_blobs.sql")),
];

/// How many times a write re-reads and retries when another relay node moved the same row
/// first (PostgreSQL with several nodes; never happens on SQLite's single writer).
const CAS_RETRIES: usize = 16;

/// When a write counts as stored, and so when its client is answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// After the transaction holding it is on disk (fsync): survives a power cut. The default.
    #[default]
    Fsync,
    /// After it reached the operating system: survives the relay crashing, not the machine
    /// (SQLite `synchronous=NORMAL`, PostgreSQL `synchronous_commit=off`). What NATS
    /// JetStream's default gives, for like-for-like comparisons.
    OsBuffered,
}

/// Where the relay keeps its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreLocation {
    /// An embedded SQLite file.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL database shared by any number of relay nodes (`postgres://…`).
    Postgres(String),
}

impl StoreLocation {
    /// `postgres://…` or `postgresql://…` is PostgreSQL; `sqlite://PATH` or a plain path is
    /// SQLite.
    pub fn parse(s: &str) -> Self {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            StoreLocation::Postgres(s.to_string())
        } else {
            StoreLocation::Sqlite(s.strip_prefix("sqlite://").unwrap_or(s).into())
        }
    }

    /// A description safe for logs: no password, no host.
    pub fn describe(&self) -> String {
        match self {
            StoreLocation::Sqlite(p) => format!("SQLite {}", p.display()),
            StoreLocation::Postgres(url) => {
                let database = url.split('?').next().and_then(|u| u.rsplit_once('/')).map(|(_, db)| db).unwrap_or("");
                format!("PostgreSQL database {database:?}")
            }
        }
    }
}

fn db_err(e: sqlx::Error) -> RelayError {
    RelayError::Storage(e.to_string())
}

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Store {
    /// Opens (and migrates) the store. The [`WriterTask`] finishes once every clone of the
    /// store is dropped and every write handed to it is committed.
    pub async fn open(location: &StoreLocation) -> Result<(Self, WriterTask), RelayError> {
        Self::open_with(location, Durability::Fsync).await
    }

    /// [`Store::open`] with a choice of when writes count as stored.
    pub async fn open_with(location: &StoreLocation, durability: Durability) -> Result<(Self, WriterTask), RelayError> {
        sqlx::any::install_default_drivers();
        let (url, sqlite) = match location {
            StoreLocation::Sqlite(path) => (format!("sqlite://{}?mode=rwc", path.display()), true),
            StoreLocation::Postgres(url) => (url.clone(), false),
        };
        let mut writer = AnyConnection::connect(&url).await.map_err(db_err)?;
        if sqlite {
            for pragma in ["PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL", "PRAGMA busy_timeout=5000"] {
                sqlx::raw_sql(pragma).execute(&mut writer).await.map_err(db_err)?;
            }
            migrate(&mut writer, SQLITE_MIGRATIONS).await?;
        } else {
            // Several nodes may start at once: one migrates, the others wait for it.
            sqlx::raw_sql("SELECT pg_advisory_lock(746970)").execute(&mut writer).await.map_err(db_err)?;
            let migrated = migrate(&mut writer, POSTGRES_MIGRATIONS).await;
            sqlx::raw_sql("SELECT pg_advisory_unlock(746970)").execute(&mut writer).await.map_err(db_err)?;
            migrated?;
        }
        let mut options = AnyPoolOptions::new().max_connections(4).acquire_timeout(Duration::from_secs(10));
        if sqlite {
            options = options.after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::raw_sql("PRAGMA busy_timeout=5000").execute(conn).await?;
                    Ok(())
                })
            });
        }
        let pool = options.connect(&url).await.map_err(db_err)?;
        let hub = Arc::new(NoticeHub::default());
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let task = match location {
            // This process is the only writer: a thread of its own, and it announces its own
            // commits.
            StoreLocation::Sqlite(path) => {
                let _ = writer.close().await;
                let conn = crate::sqlite_writer::open(path, durability)?;
                let hub = hub.clone();
                WriterTask(tokio::task::spawn_blocking(move || crate::sqlite_writer::run(conn, rx, hub)))
            }
            // Every node's commits arrive through NOTIFY, including this node's own.
            StoreLocation::Postgres(_) => {
                let mut listener = sqlx::postgres::PgListener::connect(&url).await.map_err(db_err)?;
                listener.listen(NOTIFY_CHANNEL).await.map_err(db_err)?;
                tokio::spawn(listen_loop(listener, hub.clone()));
                let _ = writer.close().await;
                let writer = connect_postgres_writer(&url, durability).await.map_err(db_err)?;
                WriterTask(tokio::spawn(writer_task(writer, rx, url.clone(), durability)))
            }
        };
        Ok((Self { pool, reads_on: None, writer: tx, hub }, task))
    }

    /// This handle, with its reads run as tasks on `runtime`. The pool's connections (their
    /// sockets, files and worker threads) are opened, used and closed wherever a read runs,
    /// and connection shards each have a descriptor table of their own: a shard's sessions
    /// read through the runtime the store was opened on, so every pool connection lives in
    /// that one table.
    pub(crate) fn reading_on(mut self, runtime: tokio::runtime::Handle) -> Self {
        self.reads_on = Some(runtime);
        self
    }

    async fn fetch_optional(&self, query: Read) -> Result<Option<AnyRow>, RelayError> {
        let pool = self.pool.clone();
        self.run_read(async move { query.fetch_optional(&pool).await }).await
    }

    async fn fetch_all(&self, query: Read) -> Result<Vec<AnyRow>, RelayError> {
        let pool = self.pool.clone();
        self.run_read(async move { query.fetch_all(&pool).await }).await
    }

    async fn run_read<T: Send + 'static>(
        &self,
        read: impl Future<Output = Result<T, sqlx::Error>> + Send + 'static,
    ) -> Result<T, RelayError> {
        match &self.reads_on {
            None => read.await.map_err(db_err),
            Some(runtime) => runtime
                .spawn(read)
                .await
                .map_err(
                    |e| if e.is_cancelled() { RelayError::ShuttingDown } else { RelayError::Storage(e.to_string()) },
                )?
                .map_err(db_err),
        }
    }

    /// A listener for newly committed entries under the ids it watches, from this node and
    /// (PostgreSQL) all others.
    pub fn listener(&self) -> Listener {
        self.hub.listener()
    }

    /// Applies a write; returns once it is durable.
    pub async fn write(&self, write: Write) -> Result<Outcome, RelayError> {
        self.submit(write).await?.await
    }

    /// Hands a write to the writer now (writes submitted one after another are applied in
    /// that order) and returns what resolves once it is durable.
    pub async fn submit(&self, write: Write) -> Result<Commit, RelayError> {
        let (reply, wait) = oneshot::channel();
        self.writer.send(Job { write, reply, queued: Instant::now() }).await.map_err(|_| RelayError::ShuttingDown)?;
        Ok(Commit(wait))
    }

    /// The public key of a queue's reader, by read id.
    pub async fn queue_key(&self, read_id: &[u8]) -> Result<Option<Vec<u8>>, RelayError> {
        let row = self
            .fetch_optional(sqlx::query("SELECT read_key FROM queues WHERE read_id = $1").bind(read_id.to_vec()))
            .await?;
        row.map(|r| r.try_get::<Vec<u8>, _>(0)).transpose().map_err(db_err)
    }

    /// The members' public key of a log.
    pub async fn log_key(&self, log_id: &[u8]) -> Result<Option<Vec<u8>>, RelayError> {
        let row = self
            .fetch_optional(sqlx::query("SELECT log_key FROM logs WHERE log_id = $1").bind(log_id.to_vec()))
            .await?;
        row.map(|r| r.try_get::<Vec<u8>, _>(0)).transpose().map_err(db_err)
    }

    /// The uploader's public key of a blob.
    pub async fn blob_key(&self, blob_id: &[u8]) -> Result<Option<Vec<u8>>, RelayError> {
        let row = self
            .fetch_optional(sqlx::query("SELECT write_key FROM blobs WHERE blob_id = $1").bind(blob_id.to_vec()))
            .await?;
        row.map(|r| r.try_get::<Vec<u8>, _>(0)).transpose().map_err(db_err)
    }

    /// A blob's stored length and final size.
    pub async fn blob_status(&self, blob_id: &[u8]) -> Result<Option<(u64, u64)>, RelayError> {
        let row = self
            .fetch_optional(sqlx::query("SELECT length, size FROM blobs WHERE blob_id = $1").bind(blob_id.to_vec()))
            .await?;
        row.map(|r| Ok((to_u64(r.try_get(0)?), to_u64(r.try_get(1)?)))).transpose().map_err(db_err)
    }

    /// Up to `max_bytes` of a blob from `offset` (none past its stored length), with its stored
    /// length and final size; `None` if there is no such blob (or retention just deleted it).
    pub async fn read_blob(
        &self,
        blob_id: &[u8],
        offset: u64,
        max_bytes: usize,
    ) -> Result<Option<(Vec<u8>, u64, u64)>, RelayError> {
        let Some((length, size)) = self.blob_status(blob_id).await? else { return Ok(None) };
        let end = length.min(offset.saturating_add(max_bytes as u64));
        if offset >= end {
            return Ok(Some((Vec::new(), length, size)));
        }
        // The piece holding `offset`, and the ones after it up to `end`. Pieces are never
        // changed once stored, so reading them outside the status query's snapshot is safe.
        let query = sqlx::query(
            "SELECT pos, data FROM blob_pieces WHERE blob_id = $1 AND pos < $3 \
             AND pos >= (SELECT MAX(pos) FROM blob_pieces WHERE blob_id = $1 AND pos <= $2) ORDER BY pos",
        )
        .bind(blob_id.to_vec())
        .bind(to_i64(offset))
        .bind(to_i64(end));
        let rows = self.fetch_all(query).await?;
        let mut data = Vec::with_capacity(usize::try_from(end - offset).unwrap_or(0));
        for row in rows {
            let pos = to_u64(row.try_get(0).map_err(db_err)?);
            let piece: Vec<u8> = row.try_get(1).map_err(db_err)?;
            let from = offset.saturating_sub(pos);
            let to = (end - pos).min(piece.len() as u64);
            if pos + from != offset + data.len() as u64 || from > to {
                return Ok(None); // not contiguous: deleted under us
            }
            data.extend_from_slice(&piece[from as usize..to as usize]);
        }
        if data.len() as u64 != end - offset {
            return Ok(None);
        }
        Ok(Some((data, length, size)))
    }

    /// Messages in a queue after `after`, within the reply budget.
    pub async fn read_queue(
        &self,
        read_id: &[u8],
        after: u64,
        limit: u32,
        max_bytes: u32,
    ) -> Result<(Vec<Entry>, bool), RelayError> {
        let sql = "SELECT seq, dedup_id, payload, received_hour FROM queue_messages WHERE read_id = $1 AND seq > $2 ORDER BY seq LIMIT $3";
        self.read_entries(sql, read_id, after, limit, max_bytes).await
    }

    /// Entries of a log after `after`, within the reply budget.
    pub async fn read_log(
        &self,
        log_id: &[u8],
        after: u64,
        limit: u32,
        max_bytes: u32,
    ) -> Result<(Vec<Entry>, bool), RelayError> {
        let sql = "SELECT seq, dedup_id, payload, received_hour FROM log_entries WHERE log_id = $1 AND seq > $2 ORDER BY seq LIMIT $3";
        self.read_entries(sql, log_id, after, limit, max_bytes).await
    }

    async fn read_entries(
        &self,
        sql: &'static str,
        id: &[u8],
        after: u64,
        limit: u32,
        max_bytes: u32,
    ) -> Result<(Vec<Entry>, bool), RelayError> {
        let limit = limit.clamp(1, tamizdat_wire::limits::MAX_READ_ENTRIES);
        let budget = match usize::try_from(max_bytes) {
            Ok(0) | Err(_) => tamizdat_wire::limits::READ_REPLY_BUDGET,
            Ok(n) => n.min(tamizdat_wire::limits::READ_REPLY_BUDGET),
        };
        let query = sqlx::query(sql).bind(id.to_vec()).bind(to_i64(after)).bind(i64::from(limit) + 1);
        let rows = self.fetch_all(query).await?;
        let mut more = rows.len() > limit as usize;
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        for row in rows.into_iter().take(limit as usize) {
            let payload: Vec<u8> = row.try_get(2).map_err(db_err)?;
            if !entries.is_empty() && bytes + payload.len() > budget {
                more = true;
                break;
            }
            bytes += payload.len();
            entries.push(Entry {
                seq: to_u64(row.try_get(0).map_err(db_err)?),
                dedup_id: row.try_get(1).map_err(db_err)?,
                payload,
                received_hour: to_u64(row.try_get(3).map_err(db_err)?),
            });
        }
        Ok((entries, more))
    }
}

async fn migrate(conn: &mut AnyConnection, migrations: &[(i64, &'static str)]) -> Result<(), RelayError> {
    sqlx::raw_sql("CREATE TABLE IF NOT EXISTS tamizdat_schema (version INTEGER PRIMARY KEY)")
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    for (version, sql) in migrations {
        let done = sqlx::query("SELECT version FROM tamizdat_schema WHERE version = $1")
            .bind(*version)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err)?;
        if done.is_some() {
            continue;
        }
        let mut tx = conn.begin().await.map_err(db_err)?;
        sqlx::raw_sql(*sql).execute(&mut *tx).await.map_err(db_err)?;
        sqlx::query("INSERT INTO tamizdat_schema (version) VALUES ($1)")
            .bind(*version)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
    }
    Ok(())
}

/// Relays other nodes' (and our own) NOTIFYs into the local hub. A gap while the listener
/// reconnects is covered by clients' periodic resync.
async fn listen_loop(mut listener: sqlx::postgres::PgListener, hub: Arc<NoticeHub>) {
    loop {
        match listener.recv().await {
            Ok(n) => hub.publish(&parse_notices(n.payload())),
            Err(e) => {
                tracing::warn!(error = %e, "notification listener failed; retrying");
                // Notices may have been missed meanwhile: tell every session to look again.
                hub.publish(&[Notice::bare(Vec::new(), 0)]);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Below PostgreSQL's 8,000-byte limit on one notification's payload.
const MAX_NOTIFY_PAYLOAD: usize = 7_900;

/// A batch's notices as few NOTIFY payloads as fit: one line `hex(id):seq` per notice. One
/// NOTIFY per notice was a round trip to the database per message.
fn notify_payloads(notices: &[Notice]) -> Vec<String> {
    let mut payloads: Vec<String> = Vec::new();
    for n in notices {
        let line = format!("{}:{}", hex::encode(&n.id), n.seq);
        match payloads.last_mut() {
            Some(p) if p.len() + 1 + line.len() <= MAX_NOTIFY_PAYLOAD => {
                p.push('\n');
                p.push_str(&line);
            }
            _ => payloads.push(line),
        }
    }
    payloads
}

/// The notices in one payload; lines that do not parse are skipped.
fn parse_notices(payload: &str) -> Vec<Notice> {
    payload
        .lines()
        .filter_map(|line| {
            let (id, seq) = line.split_once(':')?;
            Some(Notice::bare(hex::decode(id).ok()?, seq.parse().ok()?))
        })
        .collect()
}

/// Group commit on PostgreSQL: take everything waiting, apply it in one transaction, answer
/// after COMMIT. The announcements are NOTIFYs inside the transaction, delivered only if it
/// commits. When the database connection is lost (a restart or failover) the writer connects
/// to `url` again: writes fail until then, clients retry.
async fn writer_task(mut conn: AnyConnection, mut rx: mpsc::Receiver<Job>, url: String, durability: Durability) {
    while let Some(first) = rx.recv().await {
        let jobs = fill_batch(first, &mut rx);
        let results = apply_batch(&mut conn, &jobs).await;
        answer(jobs, results);
        if conn.ping().await.is_err() {
            tracing::warn!("database connection lost; reconnecting");
            loop {
                match connect_postgres_writer(&url, durability).await {
                    Ok(c) => {
                        conn = c;
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        }
    }
    let _ = conn.close().await;
}

/// The PostgreSQL writer's connection, with the session settings its durability needs (again
/// after every reconnect).
async fn connect_postgres_writer(url: &str, durability: Durability) -> Result<AnyConnection, sqlx::Error> {
    let mut conn = AnyConnection::connect(url).await?;
    if durability == Durability::OsBuffered {
        sqlx::raw_sql("SET synchronous_commit = off").execute(&mut conn).await?;
    }
    Ok(conn)
}

/// A batch: `first` and whatever else is already waiting, up to [`MAX_BATCH`].
pub(crate) fn fill_batch(first: Job, rx: &mut mpsc::Receiver<Job>) -> Vec<Job> {
    let mut jobs = vec![first];
    while jobs.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
    jobs
}

/// Counts a committed (or failed) batch and answers every write in it.
pub(crate) fn answer(jobs: Vec<Job>, results: Vec<Result<Outcome, RelayError>>) {
    let m = crate::metrics::global();
    crate::metrics::Metrics::inc(&m.write_batches_total);
    m.write_batch_items_total.fetch_add(jobs.len() as u64, std::sync::atomic::Ordering::Relaxed);
    // One clock reading for the batch: its writes became durable together.
    let durable = Instant::now();
    for (job, result) in jobs.into_iter().zip(results) {
        m.write_seconds.observe(durable.saturating_duration_since(job.queued));
        let _ = job.reply.send(result);
    }
}

async fn apply_batch(conn: &mut AnyConnection, jobs: &[Job]) -> Vec<Result<Outcome, RelayError>> {
    // Writes are applied in a global order of the rows they lock (stable, so one log's or
    // queue's writes keep their order): two nodes' batches then cannot deadlock on each other.
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by(|&a, &b| lock_key(&jobs[a].write).cmp(&lock_key(&jobs[b].write)));
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut notices = Vec::new();
        let result = async {
            let mut tx = conn.begin().await?;
            // The compare-and-swap retry relies on each statement seeing the latest commit.
            sqlx::raw_sql("SET TRANSACTION ISOLATION LEVEL READ COMMITTED").execute(&mut *tx).await?;
            let mut outcomes: Vec<Option<Outcome>> = jobs.iter().map(|_| None).collect();
            for &i in &order {
                outcomes[i] = Some(apply(&mut tx, &jobs[i].write, &mut notices).await?);
            }
            for payload in notify_payloads(&notices) {
                sqlx::query("SELECT pg_notify($1, $2)").bind(NOTIFY_CHANNEL).bind(payload).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(outcomes)
        }
        .await;
        match result {
            Ok(outcomes) => {
                return outcomes
                    .into_iter()
                    .map(|o| o.ok_or_else(|| RelayError::Storage("a write was not applied".into())))
                    .collect();
            }
            // Another node's transaction won a lock race: run the batch again.
            Err(e) if attempt < 4 && is_transient(&e) => {
                tracing::debug!("write batch conflicted with another node; retrying");
            }
            Err(e) => {
                tracing::error!(error = %e, batch = jobs.len(), "write batch failed; clients will retry");
                return jobs.iter().map(|_| Err(RelayError::Storage(e.to_string()))).collect();
            }
        }
    }
}

/// Deadlock or serialization failure (PostgreSQL): nothing was written, a retry can succeed.
fn is_transient(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40P01" | "40001")))
}

/// The row a write locks first, for ordering a batch.
fn lock_key(write: &Write) -> (u8, &[u8]) {
    match write {
        Write::CreateQueue { read_id, .. } | Write::AckQueue { read_id, .. } => (0, read_id),
        Write::SendToQueue { send_id, .. } => (1, send_id),
        Write::CreateLog { log_id, .. } | Write::Append { log_id, .. } | Write::AckLog { log_id, .. } => (2, log_id),
        Write::CreateBlob { blob_id, .. } | Write::PutBlob { blob_id, .. } => (3, blob_id),
        Write::Expire { .. } => (4, &[]),
    }
}

async fn apply(tx: &mut AnyConnection, write: &Write, notices: &mut Vec<Notice>) -> Result<Outcome, sqlx::Error> {
    match write {
        Write::CreateQueue { read_id, send_id, read_key } => {
            sqlx::query("INSERT INTO queues (read_id, send_id, read_key) VALUES ($1, $2, $3)")
                .bind(read_id.clone())
                .bind(send_id.clone())
                .bind(read_key.clone())
                .execute(&mut *tx)
                .await?;
            Ok(Outcome::Done)
        }
        Write::SendToQueue { send_id, dedup_id, payload, hour } => {
            send_to_queue(tx, send_id, dedup_id, payload, *hour, notices).await
        }
        Write::AckQueue { read_id, up_to } => {
            sqlx::query("DELETE FROM queue_messages WHERE read_id = $1 AND seq <= $2")
                .bind(read_id.clone())
                .bind(to_i64(*up_to))
                .execute(&mut *tx)
                .await?;
            Ok(Outcome::Done)
        }
        Write::CreateLog { log_id, log_key } => {
            sqlx::query("INSERT INTO logs (log_id, log_key) VALUES ($1, $2)")
                .bind(log_id.clone())
                .bind(log_key.clone())
                .execute(&mut *tx)
                .await?;
            Ok(Outcome::Done)
        }
        Write::Append { log_id, dedup_id, payload, header, hour } => {
            let outcome = append(tx, log_id, dedup_id, payload, header, *hour).await?;
            if let Outcome::Stored { seq, duplicate: false, .. } = outcome {
                // PostgreSQL announces through NOTIFY, which carries ids only.
                notices.push(Notice::bare(log_id.clone(), seq));
            }
            Ok(outcome)
        }
        Write::AckLog { log_id, cursor_id, up_to } => {
            sqlx::query(
                "INSERT INTO log_cursors (log_id, cursor_id, position) VALUES ($1, $2, $3) \
                 ON CONFLICT (log_id, cursor_id) DO UPDATE SET position = \
                 CASE WHEN excluded.position > log_cursors.position THEN excluded.position ELSE log_cursors.position END",
            )
            .bind(log_id.clone())
            .bind(cursor_id.clone())
            .bind(to_i64(*up_to))
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "DELETE FROM log_entries WHERE log_id = $1 AND seq <= (SELECT MIN(position) FROM log_cursors WHERE log_id = $1)",
            )
            .bind(log_id.clone())
            .execute(&mut *tx)
            .await?;
            Ok(Outcome::Done)
        }
        Write::CreateBlob { blob_id, write_key, size, hour } => {
            sqlx::query("INSERT INTO blobs (blob_id, write_key, size, created_hour) VALUES ($1, $2, $3, $4)")
                .bind(blob_id.clone())
                .bind(write_key.clone())
                .bind(to_i64(*size))
                .bind(*hour)
                .execute(&mut *tx)
                .await?;
            Ok(Outcome::Done)
        }
        Write::PutBlob { blob_id, offset, data } => put_blob(tx, blob_id, *offset, data).await,
        Write::Expire { before_hour } => {
            for sql in [
                "DELETE FROM queue_messages WHERE received_hour < $1",
                "DELETE FROM log_entries WHERE received_hour < $1",
                "DELETE FROM blob_pieces WHERE blob_id IN (SELECT blob_id FROM blobs WHERE created_hour < $1)",
                "DELETE FROM blobs WHERE created_hour < $1",
            ] {
                sqlx::query(sql).bind(*before_hour).execute(&mut *tx).await?;
            }
            Ok(Outcome::Done)
        }
    }
}

/// Stores a queue message under the next sequence number. The sequence counter moves by
/// compare-and-swap, so two relay nodes never hand out the same number.
async fn send_to_queue(
    tx: &mut AnyConnection,
    send_id: &[u8],
    dedup_id: &[u8],
    payload: &[u8],
    hour: i64,
    notices: &mut Vec<Notice>,
) -> Result<Outcome, sqlx::Error> {
    for _ in 0..CAS_RETRIES {
        let Some(row) = sqlx::query("SELECT read_id, next_seq FROM queues WHERE send_id = $1")
            .bind(send_id.to_vec())
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(Outcome::NotFound);
        };
        let read_id: Vec<u8> = row.try_get(0)?;
        let seq: i64 = row.try_get(1)?;
        if let Some(dup) = sqlx::query("SELECT seq FROM queue_messages WHERE read_id = $1 AND dedup_id = $2")
            .bind(read_id.clone())
            .bind(dedup_id.to_vec())
            .fetch_optional(&mut *tx)
            .await?
        {
            return Ok(Outcome::Stored { seq: to_u64(dup.try_get(0)?), epoch: 0, duplicate: true });
        }
        let count: i64 = sqlx::query("SELECT COUNT(*) FROM queue_messages WHERE read_id = $1")
            .bind(read_id.clone())
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        if count >= QUEUE_QUOTA {
            return Ok(Outcome::QueueFull);
        }
        let moved = sqlx::query("UPDATE queues SET next_seq = $1 WHERE read_id = $2 AND next_seq = $3")
            .bind(seq + 1)
            .bind(read_id.clone())
            .bind(seq)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if moved == 0 {
            continue;
        }
        sqlx::query(
            "INSERT INTO queue_messages (read_id, seq, dedup_id, payload, received_hour) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(read_id.clone())
        .bind(seq)
        .bind(dedup_id.to_vec())
        .bind(payload.to_vec())
        .bind(hour)
        .execute(&mut *tx)
        .await?;
        notices.push(Notice::bare(read_id, to_u64(seq)));
        return Ok(Outcome::Stored { seq: to_u64(seq), epoch: 0, duplicate: false });
    }
    Err(sqlx::Error::Protocol("queue sequence contended past the retry limit".into()))
}

/// Appends a piece to a blob if it starts at the stored length. The length moves by
/// compare-and-swap, so of two nodes storing the same piece one does and the other finds it
/// stored.
async fn put_blob(tx: &mut AnyConnection, blob_id: &[u8], offset: u64, data: &[u8]) -> Result<Outcome, sqlx::Error> {
    for _ in 0..CAS_RETRIES {
        let Some(row) = sqlx::query("SELECT length, size FROM blobs WHERE blob_id = $1")
            .bind(blob_id.to_vec())
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(Outcome::NotFound);
        };
        let (length, size) = (to_u64(row.try_get(0)?), to_u64(row.try_get(1)?));
        let end = match blob_piece(length, size, offset, data.len()) {
            Ok(end) => end,
            Err(outcome) => return Ok(outcome),
        };
        let moved = sqlx::query("UPDATE blobs SET length = $1 WHERE blob_id = $2 AND length = $3")
            .bind(to_i64(end))
            .bind(blob_id.to_vec())
            .bind(to_i64(length))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if moved == 0 {
            continue;
        }
        sqlx::query("INSERT INTO blob_pieces (blob_id, pos, data) VALUES ($1, $2, $3)")
            .bind(blob_id.to_vec())
            .bind(to_i64(offset))
            .bind(data.to_vec())
            .execute(&mut *tx)
            .await?;
        return Ok(Outcome::Blob { length: end, size });
    }
    Err(sqlx::Error::Protocol("blob length contended past the retry limit".into()))
}

/// The rule for a blob piece: where the blob ends once it is stored, or the answer without
/// storing it. A piece that starts below the stored length was stored before (a retry, or a
/// second uploader): its sender learns the length and goes on from there.
pub(crate) fn blob_piece(length: u64, size: u64, offset: u64, len: usize) -> Result<u64, Outcome> {
    if offset < length {
        return Err(Outcome::Blob { length, size });
    }
    if offset > length {
        return Err(Outcome::Refused("a blob is written in order: this offset is past its stored length"));
    }
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(end),
        _ => Err(Outcome::Refused("this piece goes past the blob's size")),
    }
}

/// The Delivery Service rule: entries get consecutive sequence numbers; a commit is accepted
/// only for the log's current epoch and moves it forward (compare-and-swap inside the
/// transaction); nothing from a future epoch or another group is accepted.
async fn append(
    tx: &mut AnyConnection,
    log_id: &[u8],
    dedup_id: &[u8],
    payload: &[u8],
    header: &MlsHeader,
    hour: i64,
) -> Result<Outcome, sqlx::Error> {
    for _ in 0..CAS_RETRIES {
        // Each statement is a round trip to the database, the PostgreSQL writer's main cost:
        // the log's state and the duplicate check come in one.
        let Some(row) = sqlx::query(
            "SELECT l.group_id, l.epoch, l.next_seq, \
             (SELECT e.seq FROM log_entries e WHERE e.log_id = l.log_id AND e.dedup_id = $2) \
             FROM logs l WHERE l.log_id = $1",
        )
        .bind(log_id.to_vec())
        .bind(dedup_id.to_vec())
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(Outcome::NotFound);
        };
        let group_id: Option<Vec<u8>> = row.try_get(0)?;
        let epoch = to_u64(row.try_get(1)?);
        let seq: i64 = row.try_get(2)?;
        if let Some(dup) = row.try_get::<Option<i64>, _>(3)? {
            return Ok(Outcome::Stored { seq: to_u64(dup), epoch, duplicate: true });
        }
        let new_epoch = match next_epoch(group_id.as_deref(), epoch, header) {
            Ok(e) => e,
            Err(outcome) => return Ok(outcome),
        };
        // Compare-and-swap on the sequence counter: the epoch moves with it, so of two commits
        // for one epoch (on any node) exactly one gets here first; the other re-reads and finds
        // its epoch taken. The entry is inserted by the same statement, only if the counter
        // moved.
        let stored = sqlx::query(
            "WITH moved AS (UPDATE logs SET next_seq = $2 + 1, epoch = $3, group_id = $4 \
             WHERE log_id = $1 AND next_seq = $2 RETURNING log_id) \
             INSERT INTO log_entries (log_id, seq, dedup_id, epoch, payload, received_hour) \
             SELECT log_id, $2, $5, $6, $7, $8 FROM moved",
        )
        .bind(log_id.to_vec())
        .bind(seq)
        .bind(to_i64(new_epoch))
        .bind(header.group_id.clone())
        .bind(dedup_id.to_vec())
        .bind(to_i64(header.epoch))
        .bind(payload.to_vec())
        .bind(hour)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if stored == 0 {
            continue;
        }
        return Ok(Outcome::Stored { seq: to_u64(seq), epoch: new_epoch, duplicate: false });
    }
    Err(sqlx::Error::Protocol("log sequence contended past the retry limit".into()))
}

/// The Delivery Service rule for one entry: the log's epoch after it, or why it is refused.
/// A commit is accepted only for the log's current epoch and moves it forward; nothing from a
/// future epoch or another group is accepted.
pub(crate) fn next_epoch(group_id: Option<&[u8]>, epoch: u64, header: &MlsHeader) -> Result<u64, Outcome> {
    if group_id.is_some_and(|g| g != header.group_id.as_slice()) {
        return Err(Outcome::Refused("this log belongs to another group"));
    }
    match header.content_type {
        ContentType::Commit if header.epoch < epoch => Err(Outcome::StaleEpoch { current: epoch }),
        ContentType::Commit if header.epoch > epoch => Err(Outcome::Refused("a commit for a future epoch")),
        ContentType::Commit => Ok(epoch + 1),
        _ if header.epoch > epoch => Err(Outcome::Refused("a message from a future epoch")),
        // Everything after a commit is of the new epoch, so members keep no keys of past
        // epochs (their storage is the cost: it grows with the group). The sender reads the
        // commit and encrypts again.
        _ if header.epoch < epoch => Err(Outcome::StaleEpoch { current: epoch }),
        _ => Ok(epoch),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_batch_of_notices_fits_in_few_notifications_and_comes_back_whole() {
        let notices: Vec<Notice> = (0..500u64).map(|i| Notice::bare(vec![i as u8; 32], i * 7)).collect();
        let payloads = notify_payloads(&notices);
        assert!(payloads.iter().all(|p| p.len() <= MAX_NOTIFY_PAYLOAD));
        for pair in payloads.windows(2) {
            let next_line = pair[1].lines().next().unwrap();
            assert!(
                pair[0].len() + 1 + next_line.len() > MAX_NOTIFY_PAYLOAD,
                "a payload is full before the next begins"
            );
        }
        assert!(payloads.len() > 1);
        let back: Vec<(Vec<u8>, u64)> = payloads.iter().flat_map(|p| parse_notices(p)).map(|n| (n.id, n.seq)).collect();
        assert_eq!(back, notices.into_iter().map(|n| (n.id, n.seq)).collect::<Vec<_>>());
        assert!(notify_payloads(&[]).is_empty());
        assert_eq!(parse_notices("zz:1\nabcd:2\nabcd:x").len(), 1, "lines that do not parse are skipped");
    }
}
