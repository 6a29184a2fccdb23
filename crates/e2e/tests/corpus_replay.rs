//! Replays the checked-in fuzzing corpora (`fuzz/corpus/*`) through the decoders their fuzz
//! targets exercise, so every test run covers what the fuzzer found, without a fuzzing
//! toolchain. Each decoder must refuse or accept, never panic.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;

use openmls_rust_crypto::OpenMlsRustCrypto;
use prost::Message;
use tamizdat_e2e::{DEFAULT_SUITE, content::Content, invite, proto::JoinRequest, seal};
use tamizdat_wire::{
    frame,
    link::{self, LinkKind, armor},
    mls::peek_header,
    proto::{ClientFrame, Command, RelayDescriptor, ServerFrame},
};

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    let inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} missing: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(inputs.len() > 20, "corpus {target} has only {} inputs", inputs.len());
    inputs
}

#[test]
fn wire_corpora() {
    for input in corpus("frame") {
        if let Ok(f) = frame::decode::<ClientFrame>(&input) {
            let _ = Command::decode(f.command.as_slice());
        }
        let _ = frame::decode::<ServerFrame>(&input);
    }
    for input in corpus("link") {
        if let Ok(s) = std::str::from_utf8(&input) {
            let _ = RelayDescriptor::from_link(s);
            let _ = link::dearmor(LinkKind::Invite, s);
        }
    }
    for input in corpus("mls_header") {
        let _ = peek_header(&input);
    }
}

#[test]
fn e2e_corpora() {
    let provider = OpenMlsRustCrypto::default();
    for input in corpus("invite") {
        assert!(invite::verify(&provider, &armor(LinkKind::Invite, &input), 0).is_err());
    }
    for input in corpus("content") {
        let _ = Content::from_bytes(&input);
        let _ = JoinRequest::decode(input.as_slice());
        let _ = seal::open(&provider, DEFAULT_SUITE, &[1; 32], b"aad", &input);
    }
}
