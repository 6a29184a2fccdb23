//! Pasted links.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tamizdat_wire::{link, proto::RelayDescriptor};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = RelayDescriptor::from_link(s);
        let _ = link::dearmor(link::LinkKind::Invite, s);
    }
});
