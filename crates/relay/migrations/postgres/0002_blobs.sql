-- Same tables as migrations/sqlite/0002_blobs.sql, in PostgreSQL's types. The pieces are
-- random bytes: compressing them is wasted work.
CREATE TABLE blobs (
    blob_id BYTEA PRIMARY KEY,
    write_key BYTEA NOT NULL,
    size BIGINT NOT NULL,
    length BIGINT NOT NULL DEFAULT 0,
    created_hour BIGINT NOT NULL
);
CREATE TABLE blob_pieces (
    blob_id BYTEA NOT NULL,
    pos BIGINT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (blob_id, pos)
);
ALTER TABLE blob_pieces ALTER COLUMN data SET STORAGE EXTERNAL;
CREATE INDEX blobs_hour ON blobs (created_hour);
