//! What peers send inside encryption: decrypted content, join requests, sealed boxes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use openmls_rust_crypto::OpenMlsRustCrypto;
use prost::Message;
use tamizdat_e2e::{content::Content, proto::JoinRequest, seal, DEFAULT_SUITE};

fuzz_target!(|data: &[u8]| {
    let _ = Content::from_bytes(data);
    let _ = JoinRequest::decode(data);
    let provider = OpenMlsRustCrypto::default();
    let _ = seal::open(&provider, DEFAULT_SUITE, &[1; 32], b"aad", data);
});
