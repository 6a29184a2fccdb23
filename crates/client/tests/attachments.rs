//! Files through the engine's API: several files from one client on a relay that lets a
//! connection create one blob, progress as reported, a file to a group saved by every member, a
//! file over the relay's size limit refused before anything is recorded.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;

use tamizdat_client::{Client, ClientError, FileKind};
use tamizdat_e2e::DEFAULT_SUITE;
use tamizdat_relay::testing::spawn_relay_with;

const PASS: &str = "correct horse battery staple";

async fn person(dir: &Path, name: &str, link: &str) -> Client {
    Client::init(&dir.join(name), PASS, name, link).await.unwrap()
}

async fn connect(a: &mut Client, b: &mut Client) {
    let invite = a.invite(3600).unwrap();
    b.accept(&invite, None).await.unwrap();
    a.sync().await.unwrap();
    b.sync().await.unwrap();
}

fn file(dir: &Path, name: &str, size: usize, seed: u8) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, (0..size).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect::<Vec<_>>())
        .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_to_a_contact_and_to_a_group() {
    let dir = tempfile::tempdir().unwrap();
    let limits = tamizdat_relay::Limits { blobs_per_connection: 1, ..Default::default() };
    let link = spawn_relay_with(dir.path(), limits).await.0.to_link();
    let mut alice = person(dir.path(), "Alice", &link).await;
    let mut bob = person(dir.path(), "Bob", &link).await;
    let mut carol = person(dir.path(), "Carol", &link).await;
    connect(&mut alice, &mut bob).await;
    connect(&mut alice, &mut carol).await;

    // Two files from one client: the second blob needs a new connection, which it takes.
    let big = file(dir.path(), "big.bin", 3 * 1024 * 1024 + 5, 1);
    let mut seen = Vec::new();
    let sent =
        alice.send_file("Bob", &big, None, Some("three and a bit"), |done, total| seen.push((done, total))).await;
    let sent = sent.unwrap();
    assert_eq!(sent.state, "sent");
    assert_eq!(seen.first(), Some(&(0, 3 * 1024 * 1024 + 5)));
    assert_eq!(seen.last(), Some(&(3 * 1024 * 1024 + 5, 3 * 1024 * 1024 + 5)));
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "progress only grows");
    let empty = file(dir.path(), "empty.ogg", 0, 0);
    let sent = alice.send_file("Bob", &empty, None, None, |_, _| {}).await.unwrap();
    let attachment = sent.attachment.unwrap();
    assert_eq!((attachment.kind.as_str(), attachment.size), ("voice", 0));

    let report = bob.sync().await.unwrap();
    assert_eq!(report.messages.len(), 2);
    let out = dir.path().join("bob-out");
    std::fs::create_dir(&out).unwrap();
    for m in &report.messages {
        let a = m.attachment.as_ref().unwrap();
        let mut last = None;
        let saved = bob.save(&m.id, Some(&out), |done, _| last = Some(done)).await.unwrap();
        assert_eq!(last, Some(a.size));
        assert_eq!(saved.sha256, a.sha256);
        let original = std::fs::read(dir.path().join(&a.name)).unwrap();
        assert_eq!(std::fs::read(&saved.path).unwrap(), original);
    }
    assert_eq!(report.messages[0].text, "three and a bit");

    // A file to a group: every member saves it.
    alice.group_create("club", DEFAULT_SUITE).await.unwrap();
    alice.group_add("club", &["Bob".into(), "Carol".into()]).await.unwrap();
    let photo = file(dir.path(), "photo.jpg", 700_000, 9);
    let sent = alice.send_file("club", &photo, Some(FileKind::File), None, |_, _| {}).await.unwrap();
    assert_eq!(sent.attachment.as_ref().unwrap().kind, "file", "the given kind wins over the extension");
    for (who, member) in [("bob", &mut bob), ("carol", &mut carol)] {
        member.sync().await.unwrap();
        let m = member.messages("club").unwrap().into_iter().find(|m| m.kind == "file").unwrap();
        assert!(m.group && m.sender == "Alice");
        let target = dir.path().join(format!("{who}-photo.jpg"));
        member.save(&m.id, Some(&target), |_, _| {}).await.unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), std::fs::read(&photo).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_larger_than_the_relay_takes_is_refused_before_anything_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let limits = tamizdat_relay::Limits { max_blob_bytes: 1000, ..Default::default() };
    let link = spawn_relay_with(dir.path(), limits).await.0.to_link();
    let mut alice = person(dir.path(), "Alice", &link).await;
    let mut bob = person(dir.path(), "Bob", &link).await;
    connect(&mut alice, &mut bob).await;
    let big = file(dir.path(), "big.pdf", 2000, 3);
    match alice.send_file("Bob", &big, None, None, |_, _| {}).await {
        Err(e @ ClientError::BadInput(_)) => assert!(e.to_string().contains("larger than your relay takes"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(alice.messages("Bob").unwrap().is_empty());
    let small = file(dir.path(), "small.pdf", 900, 3);
    assert_eq!(alice.send_file("Bob", &small, None, None, |_, _| {}).await.unwrap().state, "sent");
}
