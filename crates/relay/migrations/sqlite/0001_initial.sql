-- Queues: a reader holds read_id and the key; senders hold only send_id.
CREATE TABLE queues (
    read_id BLOB PRIMARY KEY,
    send_id BLOB NOT NULL UNIQUE,
    read_key BLOB NOT NULL,
    next_seq INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE queue_messages (
    read_id BLOB NOT NULL,
    seq INTEGER NOT NULL,
    dedup_id BLOB NOT NULL,
    payload BLOB NOT NULL,
    received_hour INTEGER NOT NULL,
    PRIMARY KEY (read_id, seq),
    UNIQUE (read_id, dedup_id)
);
-- Conversation logs: the MLS Delivery Service. One commit per epoch.
CREATE TABLE logs (
    log_id BLOB PRIMARY KEY,
    log_key BLOB NOT NULL,
    group_id BLOB,
    epoch INTEGER NOT NULL DEFAULT 0,
    next_seq INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE log_entries (
    log_id BLOB NOT NULL,
    seq INTEGER NOT NULL,
    dedup_id BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    payload BLOB NOT NULL,
    received_hour INTEGER NOT NULL,
    PRIMARY KEY (log_id, seq),
    UNIQUE (log_id, dedup_id)
);
CREATE TABLE log_cursors (
    log_id BLOB NOT NULL,
    cursor_id BLOB NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (log_id, cursor_id)
);
CREATE INDEX queue_messages_hour ON queue_messages (received_hour);
CREATE INDEX log_entries_hour ON log_entries (received_hour);
