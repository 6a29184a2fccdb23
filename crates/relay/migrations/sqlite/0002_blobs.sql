-- Blobs: attachments' ciphertext, written once in order by whoever holds write_key. The
-- pieces are kept as they arrived; (blob_id, pos) orders them.
CREATE TABLE blobs (
    blob_id BLOB PRIMARY KEY,
    write_key BLOB NOT NULL,
    size INTEGER NOT NULL,
    length INTEGER NOT NULL DEFAULT 0,
    created_hour INTEGER NOT NULL
);
CREATE TABLE blob_pieces (
    blob_id BLOB NOT NULL,
    pos INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (blob_id, pos)
);
CREATE INDEX blobs_hour ON blobs (created_hour);
