#!/usr/bin/env python3
"""A model of the relay's SQLite writer, for sizing schema and statement changes before
making them in Rust: the writer's statements (crates/relay/src/sqlite_writer.rs) on its schema
(crates/relay/migrations/sqlite/0001_initial.sql), WAL with synchronous=FULL, in group-committed
batches of 12 appends and up to 10 acknowledgements over 64 one-to-one logs.

    python3 bench/sqlite-writer-model.py [VARIANT ...]

Variants: present (the relay today), ins3 (an append in three statements: the insert skips a
duplicate instead of a check before it), wr-cursors, wr-entries (WITHOUT ROWID tables), and
ins3+wr-cursors, wr-both. It prints milliseconds per batch; Python adds its own cost per
statement, so compare variants with each other, not with the relay.
"""
import os
import random
import sqlite3
import sys
import tempfile
import time

VARIANTS = ["present", "ins3", "wr-cursors", "wr-entries", "wr-both", "ins3+wr-cursors"]
BATCHES, APPENDS, ACKS, LOGS = 3000, 12, 10, 64


def schema(variant):
    entries_wr = " WITHOUT ROWID" if variant in ("wr-entries", "wr-both") else ""
    cursors_wr = " WITHOUT ROWID" if variant in ("wr-cursors", "wr-both", "ins3+wr-cursors") else ""
    return f"""
CREATE TABLE logs (log_id BLOB PRIMARY KEY, log_key BLOB NOT NULL, group_id BLOB,
    epoch INTEGER NOT NULL DEFAULT 0, next_seq INTEGER NOT NULL DEFAULT 1);
CREATE TABLE log_entries (log_id BLOB NOT NULL, seq INTEGER NOT NULL, dedup_id BLOB NOT NULL,
    epoch INTEGER NOT NULL, payload BLOB NOT NULL, received_hour INTEGER NOT NULL,
    PRIMARY KEY (log_id, seq), UNIQUE (log_id, dedup_id)){entries_wr};
CREATE TABLE log_cursors (log_id BLOB NOT NULL, cursor_id BLOB NOT NULL, position INTEGER NOT NULL,
    PRIMARY KEY (log_id, cursor_id)){cursors_wr};
CREATE INDEX log_entries_hour ON log_entries (received_hour);
"""


def run(variant, directory):
    db = sqlite3.connect(os.path.join(directory, f"{variant}.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(schema(variant))
    rng = random.Random(1)
    logs = [rng.randbytes(16) for _ in range(LOGS)]
    cursor_of = {log: rng.randbytes(16) for log in logs}
    for log in logs:
        db.execute("INSERT INTO logs (log_id, log_key, group_id) VALUES (?, ?, ?)", (log, rng.randbytes(32), b"gid"))
        db.execute("INSERT INTO log_cursors VALUES (?, ?, 0)", (log, cursor_of[log]))
    stored = {log: 0 for log in logs}
    acked = {log: 0 for log in logs}
    payload = b"\x5a" * 256
    insert = "INSERT INTO log_entries (log_id, seq, dedup_id, epoch, payload, received_hour) VALUES (?, ?, ?, ?, ?, 7)"

    def append(log, dedup):
        group_id, epoch, seq = db.execute(
            "SELECT group_id, epoch, next_seq FROM logs WHERE log_id = ?", (log,)).fetchone()
        if variant.startswith("ins3"):
            if db.execute(insert + " ON CONFLICT (log_id, dedup_id) DO NOTHING",
                          (log, seq, dedup, epoch, payload)).rowcount == 0:
                return
        elif db.execute("SELECT seq FROM log_entries WHERE log_id = ? AND dedup_id = ?", (log, dedup)).fetchone():
            return
        db.execute("UPDATE logs SET next_seq = ?, epoch = ?, group_id = ? WHERE log_id = ?",
                   (seq + 1, epoch, group_id, log))
        if not variant.startswith("ins3"):
            db.execute(insert, (log, seq, dedup, epoch, payload))
        stored[log] = seq

    def acknowledge(log):
        db.execute("INSERT INTO log_cursors (log_id, cursor_id, position) VALUES (?, ?, ?) "
                   "ON CONFLICT (log_id, cursor_id) DO UPDATE SET position = MAX(position, excluded.position)",
                   (log, cursor_of[log], stored[log]))
        db.execute("DELETE FROM log_entries WHERE log_id = ?1 AND seq <= "
                   "(SELECT MIN(position) FROM log_cursors WHERE log_id = ?1)", (log,))
        acked[log] = stored[log]

    started = time.perf_counter()
    for _ in range(BATCHES):
        db.execute("BEGIN IMMEDIATE")
        for _ in range(APPENDS):
            append(rng.choice(logs), rng.randbytes(16))
        for _ in range(ACKS):
            log = rng.choice(logs)
            if stored[log] > acked[log]:
                acknowledge(log)
        db.execute("COMMIT")
    db.close()
    return (time.perf_counter() - started) / BATCHES * 1000


def main():
    variants = sys.argv[1:] or VARIANTS
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"unknown variant {unknown[0]!r}; one of {', '.join(VARIANTS)}", file=sys.stderr)
        sys.exit(2)
    with tempfile.TemporaryDirectory() as directory:
        for variant in variants:
            print(f"{variant:16} {run(variant, directory):.3f} ms a batch")


if __name__ == "__main__":
    main()
