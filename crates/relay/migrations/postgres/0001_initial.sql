-- Same tables as migrations/sqlite/0001_initial.sql, in PostgreSQL's types.
CREATE TABLE queues (
    read_id BYTEA PRIMARY KEY,
    send_id BYTEA NOT NULL UNIQUE,
    read_key BYTEA NOT NULL,
    next_seq BIGINT NOT NULL DEFAULT 1
);
CREATE TABLE queue_messages (
    read_id BYTEA NOT NULL,
    seq BIGINT NOT NULL,
    dedup_id BYTEA NOT NULL,
    payload BYTEA NOT NULL,
    received_hour BIGINT NOT NULL,
    PRIMARY KEY (read_id, seq),
    UNIQUE (read_id, dedup_id)
);
CREATE TABLE logs (
    log_id BYTEA PRIMARY KEY,
    log_key BYTEA NOT NULL,
    group_id BYTEA,
    epoch BIGINT NOT NULL DEFAULT 0,
    next_seq BIGINT NOT NULL DEFAULT 1
);
CREATE TABLE log_entries (
    log_id BYTEA NOT NULL,
    seq BIGINT NOT NULL,
    dedup_id BYTEA NOT NULL,
    epoch BIGINT NOT NULL,
    payload BYTEA NOT NULL,
    received_hour BIGINT NOT NULL,
    PRIMARY KEY (log_id, seq),
    UNIQUE (log_id, dedup_id)
);
CREATE TABLE log_cursors (
    log_id BYTEA NOT NULL,
    cursor_id BYTEA NOT NULL,
    position BIGINT NOT NULL,
    PRIMARY KEY (log_id, cursor_id)
);
CREATE INDEX queue_messages_hour ON queue_messages (received_hour);
CREATE INDEX log_entries_hour ON log_entries (received_hour);
