//! Framing and padding: one frame is one WebSocket binary message.
//!
//! Layout: `u32 big-endian body length || protobuf body || zero padding`, where the whole
//! frame is exactly one of [`BUCKETS`]. An observer who strips TLS sees only bucket sizes.

use prost::Message;

use crate::{WireError, limits::MAX_FRAME};

/// The sizes a frame can have on the wire.
/// Steps of 4 KiB up to 16 KiB: a frame that fits in 12 KiB must not be padded past the ~16 KB
/// after which some censors freeze a connection (a fresh connection's handshake takes ~2 KB).
pub const BUCKETS: [usize; 9] = [256, 1024, 4096, 8 * 1024, 12 * 1024, 16 * 1024, 64 * 1024, 256 * 1024, MAX_FRAME];

const LEN_PREFIX: usize = 4;

/// The smallest bucket that holds `len` bytes of body, if any.
pub fn bucket_for(len: usize) -> Option<usize> {
    BUCKETS.iter().copied().find(|b| *b >= len + LEN_PREFIX)
}

/// Encodes and pads a message into a frame.
pub fn encode<M: Message>(msg: &M) -> Result<Vec<u8>, WireError> {
    let len = msg.encoded_len();
    let size = bucket_for(len).ok_or(WireError::TooLarge { size: len, limit: MAX_FRAME })?;
    let mut out = Vec::with_capacity(size);
    let len32 = u32::try_from(len).map_err(|_| WireError::TooLarge { size: len, limit: MAX_FRAME })?;
    out.extend_from_slice(&len32.to_be_bytes());
    msg.encode(&mut out).map_err(|_| WireError::Malformed("encode"))?;
    out.resize(size, 0);
    Ok(out)
}

/// Checks the padding and decodes the body of a frame.
pub fn decode<M: Message + Default>(frame: &[u8]) -> Result<M, WireError> {
    if frame.len() > MAX_FRAME {
        return Err(WireError::TooLarge { size: frame.len(), limit: MAX_FRAME });
    }
    if !BUCKETS.contains(&frame.len()) {
        return Err(WireError::Malformed("frame is not a padding bucket"));
    }
    let (prefix, rest) = frame.split_at(LEN_PREFIX);
    let mut len_bytes = [0u8; LEN_PREFIX];
    len_bytes.copy_from_slice(prefix);
    let len = u32::from_be_bytes(len_bytes) as usize;
    if len > rest.len() {
        return Err(WireError::Malformed("frame length past its end"));
    }
    let (body, padding) = rest.split_at(len);
    if padding.iter().any(|b| *b != 0) {
        return Err(WireError::Malformed("non-zero padding"));
    }
    M::decode(body).map_err(|_| WireError::Malformed("protobuf"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ClientFrame, Command, Hello, Op};

    fn hello_frame(extra: usize) -> ClientFrame {
        let cmd = Command { op: Some(Op::Hello(Hello { min_version: 1, max_version: 1 })) };
        ClientFrame { request_id: 7, command: cmd.encode_to_vec(), signature: vec![1; extra] }
    }

    #[test]
    fn frames_land_on_buckets_and_round_trip() {
        for extra in [0, 200, 1000, 5000, 70_000, 200_000] {
            let msg = hello_frame(extra);
            let bytes = encode(&msg).unwrap();
            assert!(BUCKETS.contains(&bytes.len()), "{} not a bucket", bytes.len());
            assert_eq!(decode::<ClientFrame>(&bytes).unwrap(), msg);
        }
    }

    #[test]
    fn oversized_message_is_refused() {
        assert!(matches!(encode(&hello_frame(MAX_FRAME)), Err(WireError::TooLarge { .. })));
    }

    #[test]
    fn tampered_frames_are_refused() {
        let good = encode(&hello_frame(10)).unwrap();
        let mut bad_pad = good.clone();
        *bad_pad.last_mut().unwrap() = 1;
        assert!(decode::<ClientFrame>(&bad_pad).is_err());
        let mut bad_len = good.clone();
        bad_len[0] = 0xff;
        assert!(decode::<ClientFrame>(&bad_len).is_err());
        assert!(decode::<ClientFrame>(&good[..100]).is_err());
        assert!(decode::<ClientFrame>(&[]).is_err());
    }
}
