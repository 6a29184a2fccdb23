//! Every operation tried without the right key fails, says so, and leaves the data intact.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use ed25519_dalek::SigningKey;
use prost::Message;
use tamizdat_client::{ClientError, relay::RelayClient};
use tamizdat_relay::testing::{mls_message, spawn_relay, spawn_relay_with};
use tamizdat_wire::{
    frame,
    limits::{MAX_BLOB_PIECE, MAX_PROVEN},
    proto::{
        AckLog, AckQueue, Append, BlobStatus, ClientFrame, Command, CreateBlob, CreateLog, CreateQueue, ErrorCode,
        GetBlob, Hello, Op, PutBlob, ReadLog, ReadQueue, RelayDescriptor, Reply, SendToQueue, ServerFrame, Subscribe,
    },
};

async fn relay() -> (tempfile::TempDir, RelayDescriptor) {
    let dir = tempfile::tempdir().unwrap();
    let (descriptor, _) = spawn_relay(dir.path()).await;
    (dir, descriptor)
}

fn key() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

fn code(r: Result<Reply, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Relay { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_works_without_the_right_key() {
    let (_dir, d) = relay().await;
    let mut c = RelayClient::connect(&d).await.unwrap();
    let (owner, stranger) = (key(), key());

    // Creating needs proof of the key being registered.
    let create = |k: &SigningKey| Op::CreateQueue(CreateQueue { read_key: k.verifying_key().to_bytes().to_vec() });
    assert_eq!(code(c.call(create(&owner), Some(&stranger)).await), ErrorCode::Unauthorized);
    assert_eq!(code(c.call(create(&owner), None).await), ErrorCode::Unauthorized);
    let Reply::QueueCreated(q) = c.call(create(&owner), Some(&owner)).await.unwrap() else { panic!() };
    assert_ne!(q.read_id, q.send_id);
    let send = |dedup: u8| {
        Op::SendToQueue(SendToQueue { send_id: q.send_id.clone(), dedup_id: vec![dedup; 16], payload: vec![1, 2, 3] })
    };
    c.call(send(1), None).await.unwrap();
    // A connection that proved a key needs no signature for that id again; every other
    // connection still does.
    let mut s = RelayClient::connect(&d).await.unwrap();

    // Sending needs the send capability: a guessed or a read id does not work.
    for wrong in [vec![0u8; 16], q.read_id.clone()] {
        let op = Op::SendToQueue(SendToQueue { send_id: wrong, dedup_id: vec![9; 16], payload: vec![1] });
        assert_eq!(code(c.call(op, None).await), ErrorCode::Unauthorized);
    }
    let read = |id: &[u8]| Op::ReadQueue(ReadQueue { read_id: id.to_vec(), after: 0, limit: 10, max_bytes: 0 });
    assert_eq!(code(s.call(read(&q.read_id), Some(&stranger)).await), ErrorCode::Unauthorized);
    assert_eq!(code(s.call(read(&q.read_id), None).await), ErrorCode::Unauthorized);
    // The send id is no read capability, and unknown ids look the same as wrong keys.
    assert_eq!(code(c.call(read(&q.send_id), Some(&owner)).await), ErrorCode::Unauthorized);
    assert_eq!(code(c.call(read(&[0; 16]), Some(&owner)).await), ErrorCode::Unauthorized);
    let ack = Op::AckQueue(AckQueue { read_id: q.read_id.clone(), up_to: 100 });
    assert_eq!(code(s.call(ack, Some(&stranger)).await), ErrorCode::Unauthorized);
    let Reply::Entries(e) = c.call(read(&q.read_id), Some(&owner)).await.unwrap() else { panic!() };
    assert_eq!(e.entries.len(), 1, "the refused ack deleted nothing");

    // Logs: create, append, read and ack all need the log key.
    let log_key = key();
    let create_log = Op::CreateLog(CreateLog { log_key: log_key.verifying_key().to_bytes().to_vec() });
    assert_eq!(code(s.call(create_log.clone(), Some(&stranger)).await), ErrorCode::Unauthorized);
    let Reply::LogCreated(l) = c.call(create_log, Some(&log_key)).await.unwrap() else { panic!() };
    let append = |dedup: u8, payload: Vec<u8>| {
        Op::Append(Append { log_id: l.log_id.clone(), dedup_id: vec![dedup; 16], payload })
    };
    c.call(append(1, mls_message(0, 3, 0)), Some(&log_key)).await.unwrap();
    assert_eq!(code(s.call(append(2, mls_message(1, 3, 0)), Some(&stranger)).await), ErrorCode::Unauthorized);
    assert_eq!(code(s.call(append(2, mls_message(1, 3, 0)), None).await), ErrorCode::Unauthorized);
    assert_eq!(code(c.call(append(3, b"not mls at all".to_vec()), Some(&log_key)).await), ErrorCode::NotMls);
    assert_eq!(code(c.call(append(4, vec![0; 600 * 1024]), Some(&log_key)).await), ErrorCode::TooLarge);
    // Commits may be larger than other messages (they grow with the group), but not beyond.
    let mut big_message = mls_message(0, 1, 0);
    big_message.resize(200 * 1024, 0);
    assert_eq!(code(c.call(append(5, big_message), Some(&log_key)).await), ErrorCode::TooLarge);
    let read_log = Op::ReadLog(ReadLog { log_id: l.log_id.clone(), after: 0, limit: 10, max_bytes: 0 });
    assert_eq!(code(s.call(read_log.clone(), Some(&stranger)).await), ErrorCode::Unauthorized);
    let ack_log = Op::AckLog(AckLog { log_id: l.log_id.clone(), cursor_id: vec![1; 16], up_to: 10 });
    assert_eq!(code(s.call(ack_log, Some(&stranger)).await), ErrorCode::Unauthorized);
    let Reply::Entries(e) = c.call(read_log, Some(&log_key)).await.unwrap() else { panic!() };
    assert_eq!(e.entries.len(), 1, "only the authorized append is there");
    // Watching needs the key too: no notices about other people's logs or queues.
    let sub_log = |id: &[u8]| Op::Subscribe(Subscribe { log_id: id.to_vec(), ..Default::default() });
    assert_eq!(code(s.call(sub_log(&l.log_id), Some(&stranger)).await), ErrorCode::Unauthorized);
    assert_eq!(code(c.call(sub_log(&[3; 16]), Some(&log_key)).await), ErrorCode::Unauthorized);
    let sub_queue = Op::Subscribe(Subscribe { read_id: q.read_id.clone(), ..Default::default() });
    assert_eq!(code(s.call(sub_queue, Some(&stranger)).await), ErrorCode::Unauthorized);
    let both = Op::Subscribe(Subscribe { log_id: l.log_id.clone(), read_id: q.read_id.clone(), entries: true });
    assert_eq!(code(c.call(both, Some(&log_key)).await), ErrorCode::BadRequest);
    // Stale commits are refused with the current epoch.
    match c.call(append(5, mls_message(0, 3, 0)), Some(&log_key)).await {
        Err(ClientError::Relay { code: ErrorCode::StaleEpoch, current_epoch: 1, .. }) => {}
        other => panic!("{other:?}"),
    }
}

/// A signed request captured on one connection is useless on another: the signature covers
/// the relay's per-connection nonce.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_requests_do_not_replay_on_another_connection() {
    let (_dir, d) = relay().await;
    let owner = key();
    let mut c = RelayClient::connect(&d).await.unwrap();
    let Reply::QueueCreated(q) = c
        .call(Op::CreateQueue(CreateQueue { read_key: owner.verifying_key().to_bytes().to_vec() }), Some(&owner))
        .await
        .unwrap()
    else {
        panic!()
    };
    // Build a request signed for some other nonce, as an eavesdropper would have captured it.
    let command = Command {
        op: Some(Op::ReadQueue(ReadQueue { read_id: q.read_id.clone(), after: 0, limit: 10, max_bytes: 0 })),
    }
    .encode_to_vec();
    let signature =
        ed25519_dalek::Signer::sign(&owner, &tamizdat_wire::auth_payload(&[7; 32], 2, &command)).to_bytes().to_vec();
    let mut raw = tamizdat_transport::client::connect(&d).await.unwrap();
    let hello = Command { op: Some(Op::Hello(Hello { min_version: 1, max_version: 1 })) }.encode_to_vec();
    raw.send(frame::encode(&ClientFrame { request_id: 1, command: hello, signature: vec![] }).unwrap()).await.unwrap();
    let _hello_ok: ServerFrame = frame::decode(&raw.recv().await.unwrap()).unwrap();
    raw.send(frame::encode(&ClientFrame { request_id: 2, command, signature }).unwrap()).await.unwrap();
    let reply: ServerFrame = frame::decode(&raw.recv().await.unwrap()).unwrap();
    match reply.reply {
        Some(Reply::Error(e)) => assert_eq!(e.code, ErrorCode::Unauthorized as i32),
        other => panic!("{other:?}"),
    }
}

/// A malformed frame ends that connection only; the relay keeps serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_closes_only_its_connection() {
    let (_dir, d) = relay().await;
    let mut raw = tamizdat_transport::client::connect(&d).await.unwrap();
    raw.send(vec![0xde, 0xad, 0xbe, 0xef]).await.unwrap();
    let reply: ServerFrame = frame::decode(&raw.recv().await.unwrap()).unwrap();
    assert!(matches!(reply.reply, Some(Reply::Error(ref e)) if e.code == ErrorCode::BadRequest as i32));
    assert!(raw.recv().await.is_err(), "the relay closed this connection");
    // Requests before hello are refused too.
    let mut early = tamizdat_transport::client::connect(&d).await.unwrap();
    let cmd = Command { op: Some(Op::ReadQueue(ReadQueue { read_id: vec![0; 16], after: 0, limit: 1, max_bytes: 0 })) }
        .encode_to_vec();
    early.send(frame::encode(&ClientFrame { request_id: 1, command: cmd, signature: vec![] }).unwrap()).await.unwrap();
    let reply: ServerFrame = frame::decode(&early.recv().await.unwrap()).unwrap();
    assert!(matches!(reply.reply, Some(Reply::Error(_))));
    // Someone else is unaffected.
    let mut fine = RelayClient::connect(&d).await.unwrap();
    let k = key();
    assert!(
        fine.call(Op::CreateQueue(CreateQueue { read_key: k.verifying_key().to_bytes().to_vec() }), Some(&k))
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_the_relay_did_not_keep_is_given_again() {
    let dir = tempfile::tempdir().unwrap();
    // More requests on one connection than the default rate allows in a burst.
    let limits = tamizdat_relay::Limits { requests_per_second: 1e6, requests_burst: 1e6, ..Default::default() };
    let (d, _) = spawn_relay_with(dir.path(), limits).await;
    let mut c = RelayClient::connect(&d).await.unwrap();
    // Fill what the relay remembers for this connection: it keeps every queue it created here.
    let reader = key();
    for _ in 0..MAX_PROVEN {
        let create = Op::CreateQueue(CreateQueue { read_key: reader.verifying_key().to_bytes().to_vec() });
        c.call(create, Some(&reader)).await.unwrap();
    }
    // A log made elsewhere: this connection proves its key, the relay cannot keep the proof,
    // the client believes it can send the next command unsigned.
    let log_key = key();
    let mut other = RelayClient::connect(&d).await.unwrap();
    let create_log = Op::CreateLog(CreateLog { log_key: log_key.verifying_key().to_bytes().to_vec() });
    let Reply::LogCreated(l) = other.call(create_log, Some(&log_key)).await.unwrap() else { panic!() };
    for dedup in 1..=3u8 {
        let append =
            Op::Append(Append { log_id: l.log_id.clone(), dedup_id: vec![dedup; 16], payload: mls_message(0, 1, 0) });
        assert!(matches!(c.call(append, Some(&log_key)).await.unwrap(), Reply::Appended(_)), "append {dedup}");
    }
}

/// Blobs: only the write key's holder writes, anyone with the id reads; sizes, pieces and the
/// number of blobs a connection creates are bounded, and a refusal leaves the connection usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_take_the_write_key_to_write_and_keep_to_their_limits() {
    let dir = tempfile::tempdir().unwrap();
    let limits = tamizdat_relay::Limits { max_blob_bytes: 3 << 20, blobs_per_connection: 2, ..Default::default() };
    let (d, _) = spawn_relay_with(dir.path(), limits).await;
    let mut c = RelayClient::connect(&d).await.unwrap();
    let mut s = RelayClient::connect(&d).await.unwrap();
    let (writer, stranger) = (key(), key());
    let create = |size: u64| Op::CreateBlob(CreateBlob { write_key: writer.verifying_key().to_bytes().to_vec(), size });
    assert_eq!(code(c.call(create(10), Some(&stranger)).await), ErrorCode::Unauthorized);
    assert_eq!(code(c.call(create(0), Some(&writer)).await), ErrorCode::BadRequest);
    assert_eq!(code(c.call(create((3 << 20) + 1), Some(&writer)).await), ErrorCode::TooLarge);
    let Reply::BlobCreated(b) = c.call(create(3 << 20), Some(&writer)).await.unwrap() else { panic!() };
    assert_eq!(b.blob_id.len(), 16);
    let put = |offset: u64, data: Vec<u8>| Op::PutBlob(PutBlob { blob_id: b.blob_id.clone(), offset, data });
    // Only the write key writes; a piece is at most MAX_BLOB_PIECE and never empty.
    assert_eq!(code(s.call(put(0, vec![1; 10]), Some(&stranger)).await), ErrorCode::Unauthorized);
    assert_eq!(code(s.call(put(0, vec![1; 10]), None).await), ErrorCode::Unauthorized);
    assert_eq!(code(c.call(put(0, vec![1; MAX_BLOB_PIECE + 1]), Some(&writer)).await), ErrorCode::TooLarge);
    assert_eq!(code(c.call(put(0, vec![]), Some(&writer)).await), ErrorCode::BadRequest);
    let stored = |r: Result<Reply, ClientError>| match r.unwrap() {
        Reply::BlobStored(s) => (s.length, s.size),
        other => panic!("{other:?}"),
    };
    let piece: Vec<u8> = (0..MAX_BLOB_PIECE).map(|i| (i % 253) as u8).collect();
    assert_eq!(stored(c.call(put(0, piece.clone()), Some(&writer)).await), (MAX_BLOB_PIECE as u64, 3 << 20));
    // A lost reply's retry is answered with the length; a gap is refused.
    assert_eq!(stored(c.call(put(0, piece.clone()), Some(&writer)).await), (MAX_BLOB_PIECE as u64, 3 << 20));
    assert_eq!(code(c.call(put(MAX_BLOB_PIECE as u64 + 1, vec![1]), Some(&writer)).await), ErrorCode::BadRequest);
    // Another connection reads with the id alone, in any range, and sees what is stored.
    let status = Op::BlobStatus(BlobStatus { blob_id: b.blob_id.clone() });
    assert_eq!(stored(s.call(status, None).await), (MAX_BLOB_PIECE as u64, 3 << 20));
    let get = |offset: u64, max_bytes: u32| Op::GetBlob(GetBlob { blob_id: b.blob_id.clone(), offset, max_bytes });
    let Reply::BlobData(all) = s.call(get(0, 0), None).await.unwrap() else { panic!() };
    assert_eq!(all.data, piece);
    let Reply::BlobData(part) = s.call(get(1000, 10), None).await.unwrap() else { panic!() };
    assert_eq!(part.data, piece[1000..1010]);
    let other = |blob_id: Vec<u8>| Op::GetBlob(GetBlob { blob_id, offset: 0, max_bytes: 0 });
    assert_eq!(code(s.call(other(vec![9; 16]), None).await), ErrorCode::Unauthorized);
    assert_eq!(code(s.call(other(vec![9; 3]), None).await), ErrorCode::BadRequest);
    // Two blobs per connection here; a new connection may make more.
    c.call(create(1), Some(&writer)).await.unwrap();
    assert_eq!(code(c.call(create(1), Some(&writer)).await), ErrorCode::RateLimited);
    let mut fresh = RelayClient::connect(&d).await.unwrap();
    assert!(matches!(fresh.call(create(1), Some(&writer)).await.unwrap(), Reply::BlobCreated(_)));
}
