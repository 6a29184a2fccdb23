//! Two members in memory: invite, verify, start, join, talk both ways.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use openmls_rust_crypto::OpenMlsRustCrypto;
use tamizdat_e2e::{
    Conversation, DEFAULT_SUITE, E2eError, Identity, Incoming,
    content::{Body, Content, Text},
    invite::{self, InviteParams},
    proto::JoinRequest,
    seal,
};
use tamizdat_wire::proto::RelayDescriptor;

fn relay() -> RelayDescriptor {
    RelayDescriptor { endpoints: vec!["127.0.0.1:1".into()], cert_sha256: vec![1; 32], door: vec![2; 16] }
}

fn text(id: u8, s: &str) -> Content {
    Content {
        message_id: vec![id; 16],
        sent_at_ms: 1,
        body: Some(Body::Text(Text { text: s.into(), reply_to: Vec::new() })),
        expire_secs: 0,
    }
}

#[test]
fn invite_join_and_talk_both_ways() {
    let (ap, bp) = (OpenMlsRustCrypto::default(), OpenMlsRustCrypto::default());
    let alice = Identity::create(&ap, DEFAULT_SUITE).unwrap();
    let bob = Identity::create(&bp, DEFAULT_SUITE).unwrap();
    let params = InviteParams { relays: vec![relay()], send_id: &[7; 16], expires_at: 1000 };
    let (link, secrets) = invite::create(&ap, &alice, DEFAULT_SUITE, params).unwrap();

    let verified = invite::verify(&bp, &link, 999).unwrap();
    assert_eq!(verified.body.identity_key, alice.public_key());
    let (mut bob_conv, _commit, welcome) =
        Conversation::start(&bp, &bob, verified.suite, verified.key_package).unwrap();
    bob_conv.confirm_commit(&bp).unwrap();

    // The join request travels sealed to the invite's box key.
    let join = JoinRequest { invite_id: secrets.invite_id.clone(), welcome, ..Default::default() };
    let sealed = seal::seal(
        &bp,
        verified.suite,
        &verified.body.box_key,
        &secrets.invite_id,
        &prost::Message::encode_to_vec(&join),
    )
    .unwrap();
    let opened = seal::open(&ap, DEFAULT_SUITE, &secrets.box_private, &secrets.invite_id, &sealed).unwrap();
    assert!(seal::open(&ap, DEFAULT_SUITE, &secrets.box_private, b"other aad", &sealed).is_err());
    let join: JoinRequest = prost::Message::decode(opened.as_slice()).unwrap();
    let mut alice_conv = Conversation::join(&ap, &join.welcome).unwrap();
    assert_eq!(alice_conv.group_id(), bob_conv.group_id());
    assert_eq!(alice_conv.peers(alice.public_key()), vec![bob.public_key().to_vec()]);

    let m1 = bob_conv.encrypt(&bp, &bob, &text(1, "привет 👋")).unwrap();
    match alice_conv.process(&ap, &m1).unwrap() {
        Incoming::Content { sender, content } => {
            assert_eq!(sender, bob.public_key());
            assert_eq!(content, text(1, "привет 👋"));
        }
        other => panic!("unexpected {other:?}"),
    }
    let m2 = alice_conv.encrypt(&ap, &alice, &text(2, "hi")).unwrap();
    assert!(matches!(bob_conv.process(&bp, &m2).unwrap(), Incoming::Content { .. }));
    // Replaying a message is refused by MLS (its key is gone).
    assert!(alice_conv.process(&ap, &m1).is_err());
}

#[test]
fn damaged_forged_and_expired_invites_are_refused() {
    let ap = OpenMlsRustCrypto::default();
    let alice = Identity::create(&ap, DEFAULT_SUITE).unwrap();
    let params = InviteParams { relays: vec![relay()], send_id: &[7; 16], expires_at: 1000 };
    let (link, _) = invite::create(&ap, &alice, DEFAULT_SUITE, params).unwrap();
    assert!(matches!(invite::verify(&ap, &link, 1000), Err(E2eError::ExpiredInvite)));

    let mut chars: Vec<char> = link.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'x' { 'y' } else { 'x' };
    let damaged: String = chars.into_iter().collect();
    assert!(invite::verify(&ap, &damaged, 1).is_err());

    // Re-armored with a valid checksum but a changed body: the signature catches it.
    let raw = tamizdat_wire::link::dearmor(tamizdat_wire::link::LinkKind::Invite, &link).unwrap();
    let mut signed: tamizdat_e2e::proto::SignedInvite = prost::Message::decode(raw.as_slice()).unwrap();
    let mut body: tamizdat_e2e::proto::InviteBody = prost::Message::decode(signed.body.as_slice()).unwrap();
    body.expires_at = u64::MAX;
    signed.body = prost::Message::encode_to_vec(&body);
    let forged =
        tamizdat_wire::link::armor(tamizdat_wire::link::LinkKind::Invite, &prost::Message::encode_to_vec(&signed));
    assert!(matches!(invite::verify(&ap, &forged, 1), Err(E2eError::BadInvite(_))));
}
