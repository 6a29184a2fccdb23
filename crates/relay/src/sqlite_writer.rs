//! The embedded store's writer: one thread, one SQLite connection, cached statements.
//!
//! With SQLite this process is the only writer, so nothing needs the compare-and-swap the
//! shared PostgreSQL path uses, and every statement is a direct call instead of a hop to a
//! driver thread (profiles showed those hops, not SQLite, as the relay's main cost).

use std::{
    cell::Cell,
    os::raw::c_int,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, hooks::Wal, params};
use tamizdat_wire::mls::MlsHeader;
use tokio::sync::mpsc;

use crate::{
    RelayError,
    hub::NoticeHub,
    store::{
        Durability, Job, Notice, Outcome, QUEUE_QUOTA, Write, answer, blob_piece, fill_batch, next_epoch, to_i64,
        to_u64,
    },
};

/// Opens the database file for writing with the durability every acknowledged write relies on.
pub(crate) fn open(path: &Path, durability: Durability) -> Result<Connection, RelayError> {
    let storage = |e: rusqlite::Error| RelayError::Storage(e.to_string());
    let conn = Connection::open(path).map_err(storage)?;
    // WAL with synchronous=FULL: a COMMIT returns after the log is on disk. NORMAL: after it
    // reached the operating system.
    conn.pragma_update(None, "journal_mode", "WAL").map_err(storage)?;
    let sync = match durability {
        Durability::Fsync => "FULL",
        Durability::OsBuffered => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync).map_err(storage)?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(storage)?;
    conn.set_prepared_statement_cache_capacity(32);
    conn.wal_hook(Some(note_checkpoint_due));
    Ok(conn)
}

/// Pages in the log after which the writer checkpoints: SQLite's own default.
const CHECKPOINT_PAGES: c_int = 1000;

thread_local! {
    /// Set when a commit on this thread left the log holding [`CHECKPOINT_PAGES`] or more.
    static CHECKPOINT_DUE: Cell<bool> = const { Cell::new(false) };
}

/// Takes the place of SQLite's automatic checkpoint, which runs inside the `COMMIT` that
/// crosses [`CHECKPOINT_PAGES`], so that batch's answers would wait for it: this only notes
/// that one is due, for [`checkpoint_if_due`] to run once the batch is answered.
fn note_checkpoint_due(_wal: &Wal, pages: c_int) -> rusqlite::Result<()> {
    if pages >= CHECKPOINT_PAGES {
        CHECKPOINT_DUE.set(true);
    }
    Ok(())
}

/// Runs the checkpoint a commit left due, the same one SQLite would have (passive: it copies
/// what no reader still needs and never blocks them); returns how long it took, if it ran.
fn checkpoint_if_due(conn: &Connection) -> Option<Duration> {
    if !CHECKPOINT_DUE.replace(false) {
        return None;
    }
    let started = Instant::now();
    // A failed checkpoint loses nothing: the log keeps the pages, and the next commit asks again.
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
        tracing::warn!(error = %e, "checkpoint failed");
    }
    Some(started.elapsed())
}

/// Group commit on a blocking thread: take everything waiting, apply it in one transaction,
/// answer after COMMIT, then announce what was stored, then checkpoint the log if it is due.
pub(crate) fn run(mut conn: Connection, mut rx: mpsc::Receiver<Job>, hub: Arc<NoticeHub>) {
    while let Some(first) = rx.blocking_recv() {
        let jobs = fill_batch(first, &mut rx);
        let mut notices = Vec::new();
        let results = match apply_batch(&mut conn, &jobs, &mut notices) {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            Err(e) => {
                tracing::error!(error = %e, batch = jobs.len(), "write batch failed; clients will retry");
                notices.clear();
                jobs.iter().map(|_| Err(RelayError::Storage(e.to_string()))).collect::<Vec<_>>()
            }
        };
        answer(jobs, results);
        hub.publish(&notices);
        if let Some(took) = checkpoint_if_due(&conn) {
            crate::metrics::global().checkpoint_seconds.observe(took);
        }
    }
    let _ = conn.close();
}

fn apply_batch(conn: &mut Connection, jobs: &[Job], notices: &mut Vec<Notice>) -> rusqlite::Result<Vec<Outcome>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let outcomes = jobs
        .iter()
        .map(|job| {
            let before = notices.len();
            let outcome = apply(&tx, &job.write, notices)?;
            for notice in &mut notices[before..] {
                notice.queued = Some(job.queued);
            }
            Ok(outcome)
        })
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let committing = Instant::now();
    tx.commit()?;
    crate::metrics::global().commit_seconds.observe(committing.elapsed());
    Ok(outcomes)
}

fn apply(tx: &Connection, write: &Write, notices: &mut Vec<Notice>) -> rusqlite::Result<Outcome> {
    match write {
        Write::CreateQueue { read_id, send_id, read_key } => {
            tx.prepare_cached("INSERT INTO queues (read_id, send_id, read_key) VALUES (?1, ?2, ?3)")?
                .execute(params![read_id, send_id, read_key])?;
            Ok(Outcome::Done)
        }
        Write::SendToQueue { send_id, dedup_id, payload, hour } => {
            send_to_queue(tx, send_id, dedup_id, payload, *hour, notices)
        }
        Write::AckQueue { read_id, up_to } => {
            tx.prepare_cached("DELETE FROM queue_messages WHERE read_id = ?1 AND seq <= ?2")?
                .execute(params![read_id, to_i64(*up_to)])?;
            Ok(Outcome::Done)
        }
        Write::CreateLog { log_id, log_key } => {
            tx.prepare_cached("INSERT INTO logs (log_id, log_key) VALUES (?1, ?2)")?
                .execute(params![log_id, log_key])?;
            Ok(Outcome::Done)
        }
        Write::Append { log_id, dedup_id, payload, header, hour } => {
            let outcome = append(tx, log_id, dedup_id, payload, header, *hour)?;
            if let Outcome::Stored { seq, duplicate: false, .. } = outcome {
                notices.push(Notice::stored(log_id, seq, dedup_id, payload, *hour));
            }
            Ok(outcome)
        }
        Write::AckLog { log_id, cursor_id, up_to } => {
            tx.prepare_cached(
                "INSERT INTO log_cursors (log_id, cursor_id, position) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (log_id, cursor_id) DO UPDATE SET position = MAX(position, excluded.position)",
            )?
            .execute(params![log_id, cursor_id, to_i64(*up_to)])?;
            tx.prepare_cached(
                "DELETE FROM log_entries WHERE log_id = ?1 AND seq <= (SELECT MIN(position) FROM log_cursors WHERE log_id = ?1)",
            )?
            .execute(params![log_id])?;
            Ok(Outcome::Done)
        }
        Write::CreateBlob { blob_id, write_key, size, hour } => {
            tx.prepare_cached("INSERT INTO blobs (blob_id, write_key, size, created_hour) VALUES (?1, ?2, ?3, ?4)")?
                .execute(params![blob_id, write_key, to_i64(*size), hour])?;
            Ok(Outcome::Done)
        }
        Write::PutBlob { blob_id, offset, data } => put_blob(tx, blob_id, *offset, data),
        Write::Expire { before_hour } => {
            tx.prepare_cached("DELETE FROM queue_messages WHERE received_hour < ?1")?.execute(params![before_hour])?;
            tx.prepare_cached("DELETE FROM log_entries WHERE received_hour < ?1")?.execute(params![before_hour])?;
            tx.prepare_cached(
                "DELETE FROM blob_pieces WHERE blob_id IN (SELECT blob_id FROM blobs WHERE created_hour < ?1)",
            )?
            .execute(params![before_hour])?;
            tx.prepare_cached("DELETE FROM blobs WHERE created_hour < ?1")?.execute(params![before_hour])?;
            Ok(Outcome::Done)
        }
    }
}

fn send_to_queue(
    tx: &Connection,
    send_id: &[u8],
    dedup_id: &[u8],
    payload: &[u8],
    hour: i64,
    notices: &mut Vec<Notice>,
) -> rusqlite::Result<Outcome> {
    let Some((read_id, seq)) = tx
        .prepare_cached("SELECT read_id, next_seq FROM queues WHERE send_id = ?1")?
        .query_row(params![send_id], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))
        .optional()?
    else {
        return Ok(Outcome::NotFound);
    };
    if let Some(dup) = tx
        .prepare_cached("SELECT seq FROM queue_messages WHERE read_id = ?1 AND dedup_id = ?2")?
        .query_row(params![read_id, dedup_id], |r| r.get::<_, i64>(0))
        .optional()?
    {
        return Ok(Outcome::Stored { seq: to_u64(dup), epoch: 0, duplicate: true });
    }
    let count: i64 = tx
        .prepare_cached("SELECT COUNT(*) FROM queue_messages WHERE read_id = ?1")?
        .query_row(params![read_id], |r| r.get(0))?;
    if count >= QUEUE_QUOTA {
        return Ok(Outcome::QueueFull);
    }
    tx.prepare_cached("UPDATE queues SET next_seq = ?1 WHERE read_id = ?2")?.execute(params![seq + 1, read_id])?;
    tx.prepare_cached(
        "INSERT INTO queue_messages (read_id, seq, dedup_id, payload, received_hour) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![read_id, seq, dedup_id, payload, hour])?;
    notices.push(Notice::stored(&read_id, to_u64(seq), dedup_id, payload, hour));
    Ok(Outcome::Stored { seq: to_u64(seq), epoch: 0, duplicate: false })
}

fn put_blob(tx: &Connection, blob_id: &[u8], offset: u64, data: &[u8]) -> rusqlite::Result<Outcome> {
    let Some((length, size)) = tx
        .prepare_cached("SELECT length, size FROM blobs WHERE blob_id = ?1")?
        .query_row(params![blob_id], |r| Ok((to_u64(r.get::<_, i64>(0)?), to_u64(r.get::<_, i64>(1)?))))
        .optional()?
    else {
        return Ok(Outcome::NotFound);
    };
    let end = match blob_piece(length, size, offset, data.len()) {
        Ok(end) => end,
        Err(outcome) => return Ok(outcome),
    };
    tx.prepare_cached("UPDATE blobs SET length = ?1 WHERE blob_id = ?2")?.execute(params![to_i64(end), blob_id])?;
    tx.prepare_cached("INSERT INTO blob_pieces (blob_id, pos, data) VALUES (?1, ?2, ?3)")?.execute(params![
        blob_id,
        to_i64(offset),
        data
    ])?;
    Ok(Outcome::Blob { length: end, size })
}

fn append(
    tx: &Connection,
    log_id: &[u8],
    dedup_id: &[u8],
    payload: &[u8],
    header: &MlsHeader,
    hour: i64,
) -> rusqlite::Result<Outcome> {
    let Some((group_id, epoch, seq)) = tx
        .prepare_cached("SELECT group_id, epoch, next_seq FROM logs WHERE log_id = ?1")?
        .query_row(params![log_id], |r| {
            Ok((r.get::<_, Option<Vec<u8>>>(0)?, to_u64(r.get::<_, i64>(1)?), r.get::<_, i64>(2)?))
        })
        .optional()?
    else {
        return Ok(Outcome::NotFound);
    };
    if let Some(dup) = tx
        .prepare_cached("SELECT seq FROM log_entries WHERE log_id = ?1 AND dedup_id = ?2")?
        .query_row(params![log_id, dedup_id], |r| r.get::<_, i64>(0))
        .optional()?
    {
        return Ok(Outcome::Stored { seq: to_u64(dup), epoch, duplicate: true });
    }
    let new_epoch = match next_epoch(group_id.as_deref(), epoch, header) {
        Ok(e) => e,
        Err(outcome) => return Ok(outcome),
    };
    tx.prepare_cached("UPDATE logs SET next_seq = ?1, epoch = ?2, group_id = ?3 WHERE log_id = ?4")?
        .execute(params![seq + 1, to_i64(new_epoch), header.group_id, log_id])?;
    tx.prepare_cached(
        "INSERT INTO log_entries (log_id, seq, dedup_id, epoch, payload, received_hour) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![log_id, seq, dedup_id, to_i64(header.epoch), payload, hour])?;
    Ok(Outcome::Stored { seq: to_u64(seq), epoch: new_epoch, duplicate: false })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_writer_checkpoints_the_log_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let mut conn = open(&path, Durability::OsBuffered).unwrap();
        CHECKPOINT_DUE.set(false);
        conn.execute_batch("CREATE TABLE t (b BLOB)").unwrap();
        // 40 MiB through the log in 256 KiB transactions, each freeing the last one's pages:
        // without checkpoints the log would hold all of it.
        let mut checkpoints = 0;
        for _ in 0..160 {
            let tx = conn.transaction().unwrap();
            tx.execute("DELETE FROM t", []).unwrap();
            tx.execute("INSERT INTO t VALUES (zeroblob(262144))", []).unwrap();
            tx.commit().unwrap();
            checkpoints += usize::from(checkpoint_if_due(&conn).is_some());
        }
        let wal = std::fs::metadata(dir.path().join("w.db-wal")).unwrap().len();
        assert!(wal < 8 << 20, "the log grew to {wal} bytes");
        // 64 pages a transaction: one checkpoint every 16 commits or so.
        assert!((5..=20).contains(&checkpoints), "{checkpoints} checkpoints timed");
    }
}
