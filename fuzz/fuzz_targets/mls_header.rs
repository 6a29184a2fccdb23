//! The relay's peek at MLS headers of appended payloads.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tamizdat_wire::mls::peek_header(data);
});
