//! A peek at the cleartext header of an MLS message (RFC 9420 §6), enough for the relay to
//! act as the Delivery Service: which group, which epoch, and whether it is a commit.
//! It never decrypts and never trusts the header beyond ordering.

use crate::WireError;

/// What the relay may know about a group message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MlsHeader {
    /// The group the message belongs to.
    pub group_id: Vec<u8>,
    /// The epoch the message was sent in.
    pub epoch: u64,
    /// Application, proposal or commit.
    pub content_type: ContentType,
}

/// RFC 9420 ContentType.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentType {
    /// An application message.
    Application,
    /// A proposal.
    Proposal,
    /// A commit: the relay accepts one per (group, epoch).
    Commit,
}

const MLS10: u16 = 1;
const PUBLIC_MESSAGE: u16 = 1;
const PRIVATE_MESSAGE: u16 = 2;

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::NotMls("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    /// RFC 9420 §2.1.2 variable-length vector: a 1, 2 or 4 byte length, then the bytes.
    fn vector(&mut self) -> Result<&'a [u8], WireError> {
        let first = self.u8()?;
        let len = match first >> 6 {
            0 => usize::from(first & 0x3f),
            1 => (usize::from(first & 0x3f) << 8) | usize::from(self.u8()?),
            2 => {
                let rest = self.take(3)?;
                (usize::from(first & 0x3f) << 24)
                    | (usize::from(rest[0]) << 16)
                    | (usize::from(rest[1]) << 8)
                    | usize::from(rest[2])
            }
            _ => return Err(WireError::NotMls("invalid vector length")),
        };
        self.take(len)
    }
}

fn content_type(b: u8) -> Result<ContentType, WireError> {
    match b {
        1 => Ok(ContentType::Application),
        2 => Ok(ContentType::Proposal),
        3 => Ok(ContentType::Commit),
        _ => Err(WireError::NotMls("unknown content type")),
    }
}

/// Reads the header of an MLS PublicMessage or PrivateMessage. Anything else (Welcome,
/// KeyPackage, garbage) is refused: only group messages belong in a conversation log.
pub fn peek_header(bytes: &[u8]) -> Result<MlsHeader, WireError> {
    let mut r = Reader(bytes);
    if r.u16()? != MLS10 {
        return Err(WireError::NotMls("not MLS 1.0"));
    }
    match r.u16()? {
        PRIVATE_MESSAGE => {
            let group_id = r.vector()?.to_vec();
            let epoch = r.u64()?;
            let content_type = content_type(r.u8()?)?;
            Ok(MlsHeader { group_id, epoch, content_type })
        }
        PUBLIC_MESSAGE => {
            let group_id = r.vector()?.to_vec();
            let epoch = r.u64()?;
            match r.u8()? {
                1 | 2 => {
                    r.take(4)?;
                }
                3 | 4 => {}
                _ => return Err(WireError::NotMls("unknown sender type")),
            }
            r.vector()?; // authenticated_data
            let content_type = content_type(r.u8()?)?;
            Ok(MlsHeader { group_id, epoch, content_type })
        }
        _ => Err(WireError::NotMls("not a group message")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_private_message_header() {
        let mut m = vec![0, 1, 0, 2, 3, b'g', b'i', b'd'];
        m.extend_from_slice(&7u64.to_be_bytes());
        m.push(3);
        m.extend_from_slice(&[0, 0, 0]);
        let h = peek_header(&m).unwrap();
        assert_eq!(h, MlsHeader { group_id: b"gid".to_vec(), epoch: 7, content_type: ContentType::Commit });
    }

    #[test]
    fn reads_two_byte_vector_lengths() {
        let gid = vec![5u8; 300];
        let mut m = vec![0, 1, 0, 2, 0x40 | (300u16 >> 8) as u8, (300 & 0xff) as u8];
        m.extend_from_slice(&gid);
        m.extend_from_slice(&1u64.to_be_bytes());
        m.push(1);
        assert_eq!(peek_header(&m).unwrap().group_id, gid);
    }

    #[test]
    fn refuses_everything_else() {
        assert!(peek_header(&[]).is_err());
        assert!(peek_header(&[0, 1, 0, 3, 0]).is_err()); // a Welcome
        assert!(peek_header(&[0, 1, 0, 2, 0xff]).is_err());
        assert!(peek_header(&[0, 2, 0, 2, 0]).is_err());
    }
}
