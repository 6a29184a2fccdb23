//! Mutated invites are refused without panicking; only the untouched one verifies.
#![allow(clippy::unwrap_used, missing_docs)]

use openmls_rust_crypto::OpenMlsRustCrypto;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tamizdat_e2e::{
    DEFAULT_SUITE, Identity,
    content::Content,
    invite::{self, InviteParams},
};
use tamizdat_wire::{
    link::{LinkKind, armor, dearmor},
    proto::RelayDescriptor,
};

#[test]
fn mutated_invites_and_content() {
    let p = OpenMlsRustCrypto::default();
    let alice = Identity::create(&p, DEFAULT_SUITE).unwrap();
    let relay =
        RelayDescriptor { endpoints: vec!["192.0.2.1:443".into()], cert_sha256: vec![1; 32], door: vec![2; 16] };
    let (link, _) = invite::create(
        &p,
        &alice,
        DEFAULT_SUITE,
        InviteParams { relays: vec![relay], send_id: &[3; 16], expires_at: u64::MAX },
    )
    .unwrap();
    assert!(invite::verify(&p, &link, 0).is_ok());
    let raw = dearmor(LinkKind::Invite, &link).unwrap();
    let mut rng = StdRng::seed_from_u64(4);
    for _ in 0..300 {
        // Mutate under a fresh checksum, so the signature and decoders are what is tested.
        let mut m = raw.clone();
        let i = rng.gen_range(0..m.len());
        m[i] ^= 1 << rng.gen_range(0..8);
        if rng.gen_bool(0.2) {
            m.truncate(rng.gen_range(0..m.len()));
        }
        assert!(invite::verify(&p, &armor(LinkKind::Invite, &m), 0).is_err());
        let _ = Content::from_bytes(&m);
    }
}

/// Bytes a peer controls after decryption, and sealed boxes from anyone: refused, never a
/// panic.
#[test]
fn random_content_join_requests_and_sealed_boxes() {
    let p = OpenMlsRustCrypto::default();
    let (private, public) = tamizdat_e2e::seal::box_keypair(&p, DEFAULT_SUITE).unwrap();
    let good = tamizdat_e2e::seal::seal(&p, DEFAULT_SUITE, &public, b"aad", b"join").unwrap();
    assert_eq!(tamizdat_e2e::seal::open(&p, DEFAULT_SUITE, &private, b"aad", &good).unwrap(), b"join");
    let mut rng = StdRng::seed_from_u64(5);
    for round in 0..2_000 {
        let len = rng.gen_range(0..300);
        let random: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
        let _ = Content::from_bytes(&random);
        let _ = <tamizdat_e2e::proto::JoinRequest as prost::Message>::decode(random.as_slice());
        if round % 10 == 0 {
            assert!(tamizdat_e2e::seal::open(&p, DEFAULT_SUITE, &private, b"aad", &random).is_err());
            let mut tampered = good.clone();
            let i = rng.gen_range(0..tampered.len());
            tampered[i] ^= 1 << rng.gen_range(0..8);
            assert!(tamizdat_e2e::seal::open(&p, DEFAULT_SUITE, &private, b"aad", &tampered).is_err());
        }
    }
}

/// Content for daily use within its limits is accepted; one step past any limit is refused.
#[test]
fn daily_content_limits() {
    use tamizdat_e2e::content::{
        Attachment, Body, Delete, Edit, ExpiryTimer, MAX_EXPIRE_SECS, MAX_REACTION, MAX_RECEIPT_IDS, Reaction, Receipt,
        ReceiptKind, Text,
    };
    let id = vec![7u8; 16];
    let check = |body: Body, expire_secs: u32| {
        let c = Content { message_id: id.clone(), sent_at_ms: 1, body: Some(body), expire_secs };
        Content::from_bytes(&c.to_bytes()).is_ok()
    };
    let text = |reply_to: Vec<u8>| Body::Text(Text { text: "hi".into(), reply_to });
    assert!(check(text(vec![]), 0) && check(text(id.clone()), MAX_EXPIRE_SECS));
    assert!(!check(text(vec![1; 15]), 0), "a reply to something that is not a message id");
    assert!(!check(text(vec![]), MAX_EXPIRE_SECS + 1), "a timer past a year");

    assert!(check(Body::Edit(Edit { target: id.clone(), text: "new".into() }), 0));
    assert!(!check(Body::Edit(Edit { target: id.clone(), text: String::new() }), 0));
    assert!(!check(Body::Edit(Edit { target: vec![1; 17], text: "x".into() }), 0));
    assert!(!check(Body::Delete(Delete { target: vec![] }), 0));

    let reaction = |emoji: String| Body::Reaction(Reaction { target: id.clone(), emoji });
    assert!(check(reaction("👍".into()), 0) && check(reaction(String::new()), 0));
    assert!(!check(reaction("x".repeat(MAX_REACTION + 1)), 0));
    assert!(!check(reaction("\u{1b}[2J".into()), 0), "escape sequences are not emoji");

    let receipt =
        |kind: ReceiptKind, n: usize| Body::Receipt(Receipt { kind: kind as i32, message_ids: vec![id.clone(); n] });
    assert!(check(receipt(ReceiptKind::Read, MAX_RECEIPT_IDS), 0));
    assert!(!check(receipt(ReceiptKind::Read, MAX_RECEIPT_IDS + 1), 0));
    assert!(!check(receipt(ReceiptKind::Unspecified, 1), 0));

    assert!(check(Body::ExpiryTimer(ExpiryTimer { seconds: MAX_EXPIRE_SECS }), 0));
    assert!(!check(Body::ExpiryTimer(ExpiryTimer { seconds: MAX_EXPIRE_SECS + 1 }), 0));

    let file = |key_len: usize| {
        Body::Attachment(Attachment {
            kind: 1,
            name: "a.pdf".into(),
            size: 10,
            sha256: vec![0; 32],
            relay: Some(RelayDescriptor::default()),
            blob_id: id.clone(),
            key: vec![0; key_len],
            chunk_size: 1024,
            ..Default::default()
        })
    };
    assert!(check(file(32), 0));
    assert!(!check(file(31), 0));
}
