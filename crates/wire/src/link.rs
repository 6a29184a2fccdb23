//! `tamizdat:` links: the text people copy, paste and scan.
//!
//! `tamizdat:<kind>/<base64url(payload || checksum)>`, where the checksum is the first four
//! bytes of SHA-256 over a label, the kind and the payload. A changed, dropped or added
//! character is caught here with certainty but for one chance in 2^32, before anything else
//! looks at the payload; whatever signs the payload (invites) catches deliberate changes.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::{WireError, proto::RelayDescriptor};

/// The URI scheme of every Tamizdat link.
pub const SCHEME: &str = "tamizdat:";
const CHECKSUM_LEN: usize = 4;
/// Longest link accepted (a post-quantum KeyPackage makes invites a few kilobytes long).
pub const MAX_LINK_LEN: usize = 16 * 1024;

/// What a link carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// A relay descriptor (`tamizdat:relay/…`).
    Relay,
    /// A signed one-time invite (`tamizdat:invite/…`).
    Invite,
    /// A short code for an invite held encrypted on a relay (`tamizdat:code/…`): small enough
    /// for a QR code, which a post-quantum invite is not.
    InviteCode,
}

impl LinkKind {
    fn as_str(self) -> &'static str {
        match self {
            LinkKind::Relay => "relay",
            LinkKind::Invite => "invite",
            LinkKind::InviteCode => "code",
        }
    }
}

fn checksum(kind: LinkKind, payload: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut h = Sha256::new();
    h.update(b"tamizdat-link-v1\0");
    h.update(kind.as_str().as_bytes());
    h.update([0]);
    h.update(payload);
    let digest = h.finalize();
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&digest[..CHECKSUM_LEN]);
    out
}

/// Wraps a payload into a link of the given kind.
pub fn armor(kind: LinkKind, payload: &[u8]) -> String {
    let mut body = payload.to_vec();
    body.extend_from_slice(&checksum(kind, payload));
    format!("{SCHEME}{}/{}", kind.as_str(), URL_SAFE_NO_PAD.encode(body))
}

/// Unwraps a link of the expected kind and checks its checksum. Surrounding white space
/// (a pasted line) is ignored.
pub fn dearmor(expected: LinkKind, link: &str) -> Result<Vec<u8>, WireError> {
    let link = link.trim();
    if link.len() > MAX_LINK_LEN {
        return Err(WireError::BadLink("too long"));
    }
    let rest = link.strip_prefix(SCHEME).ok_or(WireError::BadLink("it does not start with tamizdat:"))?;
    let (kind, encoded) = rest.split_once('/').ok_or(WireError::BadLink("no kind"))?;
    if kind != expected.as_str() {
        return Err(WireError::WrongLinkKind { expected: expected.as_str(), found: kind.chars().take(16).collect() });
    }
    let mut body = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| WireError::BadLink("it has characters that do not belong in a link"))?;
    if body.len() < CHECKSUM_LEN {
        return Err(WireError::BadLink("too short"));
    }
    let sum = body.split_off(body.len() - CHECKSUM_LEN);
    if sum != checksum(expected, &body) {
        return Err(WireError::BadLink("its checksum does not match: it was changed or cut"));
    }
    Ok(body)
}

impl RelayDescriptor {
    /// The relay link for this descriptor.
    pub fn to_link(&self) -> String {
        armor(LinkKind::Relay, &self.encode_to_vec())
    }

    /// Parses and checks a relay link.
    pub fn from_link(link: &str) -> Result<Self, WireError> {
        let bytes = dearmor(LinkKind::Relay, link)?;
        let d = RelayDescriptor::decode(bytes.as_slice())
            .map_err(|_| WireError::BadLink("undecodable relay descriptor"))?;
        d.validate()?;
        Ok(d)
    }

    /// Checks the fields a client relies on.
    pub fn validate(&self) -> Result<(), WireError> {
        if self.endpoints.is_empty() || self.endpoints.len() > 16 {
            return Err(WireError::BadLink("a relay needs between 1 and 16 endpoints"));
        }
        for e in &self.endpoints {
            e.parse::<crate::endpoint::Endpoint>()?;
        }
        if self.cert_sha256.len() != 32 {
            return Err(WireError::BadLink("the certificate pin is not a SHA-256 digest"));
        }
        if self.door.len() != crate::limits::ID_LEN {
            return Err(WireError::BadLink("the relay's door key has the wrong length"));
        }
        Ok(())
    }

    /// The parsed endpoints, in the descriptor's order (checked by [`Self::validate`]).
    pub fn parsed_endpoints(&self) -> Vec<crate::endpoint::Endpoint> {
        self.endpoints.iter().filter_map(|e| e.parse().ok()).collect()
    }

    /// Whether `other` describes the same relay: the certificate pin and the door are what
    /// identify a relay; endpoints are only ways to reach it.
    pub fn same_relay(&self, other: &RelayDescriptor) -> bool {
        self.cert_sha256 == other.cert_sha256 && self.door == other.door
    }

    /// The URL path that opens the protocol on this relay; every other path is the cover site.
    pub fn door_path(&self) -> String {
        door_path(&self.door)
    }
}

/// The URL path derived from a door key. It looks like a cache-busted static asset.
pub fn door_path(door: &[u8]) -> String {
    format!("/static/{}", URL_SAFE_NO_PAD.encode(door))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor() -> RelayDescriptor {
        RelayDescriptor { endpoints: vec!["127.0.0.1:8443".into()], cert_sha256: vec![9; 32], door: vec![3; 16] }
    }

    #[test]
    fn relay_links_round_trip() {
        let d = descriptor();
        let link = d.to_link();
        assert!(link.starts_with("tamizdat:relay/"));
        assert_eq!(RelayDescriptor::from_link(&format!("  {link}\n")).unwrap(), d);
    }

    #[test]
    fn every_single_character_change_is_caught() {
        let link = descriptor().to_link();
        let start = "tamizdat:relay/".len();
        for i in start..link.len() {
            let mut chars: Vec<char> = link.chars().collect();
            chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
            let changed: String = chars.into_iter().collect();
            assert!(RelayDescriptor::from_link(&changed).is_err(), "change at {i} not caught");
        }
        assert!(RelayDescriptor::from_link(&link[..link.len() - 1]).is_err());
    }

    #[test]
    fn wrong_kind_is_named() {
        let link = armor(LinkKind::Invite, b"x");
        assert!(matches!(RelayDescriptor::from_link(&link), Err(WireError::WrongLinkKind { .. })));
    }
}
