//! Invite links: checksum, protobuf, signature, KeyPackage validation.
#![no_main]
use libfuzzer_sys::fuzz_target;
use openmls_rust_crypto::OpenMlsRustCrypto;
use tamizdat_wire::link::{armor, LinkKind};

fuzz_target!(|data: &[u8]| {
    let provider = OpenMlsRustCrypto::default();
    // Armor the bytes so the fuzzer reaches past the checksum.
    let _ = tamizdat_e2e::invite::verify(&provider, &armor(LinkKind::Invite, data), 0);
});
