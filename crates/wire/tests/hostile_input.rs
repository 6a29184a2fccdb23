//! Every decoder of untrusted bytes survives mutated input without panicking, and refuses
//! what it cannot vouch for. (The same decoders are fuzz targets under `fuzz/`.)
#![allow(clippy::unwrap_used, missing_docs)]

use prost::Message;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tamizdat_wire::{
    frame, link,
    mls::peek_header,
    proto::{Append, ClientFrame, Command, Op, RelayDescriptor, ServerFrame},
};

fn mutate(rng: &mut StdRng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.gen_range(1..4) {
        match rng.gen_range(0..5) {
            0 if !out.is_empty() => {
                let i = rng.gen_range(0..out.len());
                out[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if !out.is_empty() => {
                let i = rng.gen_range(0..out.len());
                out[i] = rng.r#gen();
            }
            2 => {
                let i = rng.gen_range(0..=out.len());
                out.insert(i, rng.r#gen());
            }
            3 if !out.is_empty() => {
                let i = rng.gen_range(0..out.len());
                out.remove(i);
            }
            _ => {
                let n = rng.gen_range(0..=out.len());
                out.truncate(n);
            }
        }
    }
    out
}

#[test]
fn frames_and_commands() {
    let mut rng = StdRng::seed_from_u64(1);
    let cmd =
        Command { op: Some(Op::Append(Append { log_id: vec![1; 16], dedup_id: vec![2; 16], payload: vec![3; 300] })) };
    let valid =
        frame::encode(&ClientFrame { request_id: 9, command: cmd.encode_to_vec(), signature: vec![4; 64] }).unwrap();
    for _ in 0..20_000 {
        let m = mutate(&mut rng, &valid);
        if let Ok(f) = frame::decode::<ClientFrame>(&m) {
            let _ = Command::decode(f.command.as_slice());
        }
        let _ = frame::decode::<ServerFrame>(&m);
    }
}

#[test]
fn relay_links() {
    let mut rng = StdRng::seed_from_u64(2);
    let d = RelayDescriptor {
        endpoints: vec!["192.0.2.1:443".into(), "[2001:db8::1]:443".into()],
        cert_sha256: vec![7; 32],
        door: vec![8; 16],
    };
    let valid = d.to_link();
    let mut accepted = 0;
    for _ in 0..20_000 {
        let m = mutate(&mut rng, valid.as_bytes());
        if let Ok(s) = std::str::from_utf8(&m) {
            if let Ok(parsed) = RelayDescriptor::from_link(s) {
                // Only mutations that leave the payload intact (trailing white space) pass.
                assert_eq!(parsed, d);
                accepted += 1;
            }
            let _ = link::dearmor(link::LinkKind::Invite, s);
        }
    }
    assert!(accepted < 200, "{accepted} mutated links accepted");
}

#[test]
fn mls_headers() {
    let mut rng = StdRng::seed_from_u64(3);
    let mut valid = vec![0, 1, 0, 2, 0x40, 32];
    valid.extend_from_slice(&[5; 32]);
    valid.extend_from_slice(&3u64.to_be_bytes());
    valid.push(1);
    valid.extend_from_slice(&[0; 64]);
    assert!(peek_header(&valid).is_ok());
    for _ in 0..50_000 {
        let _ = peek_header(&mutate(&mut rng, &valid));
    }
    for len in 0..64 {
        let random: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
        let _ = peek_header(&random);
    }
}
