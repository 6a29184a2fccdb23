//! Frames from the network, both directions, and the commands inside them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tamizdat_wire::{frame, proto};

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = frame::decode::<proto::ClientFrame>(data) {
        let _ = proto::Command::decode(f.command.as_slice());
    }
    let _ = frame::decode::<proto::ServerFrame>(data);
});
