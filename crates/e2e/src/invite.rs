//! One-time invites: everything a stranger needs to start an end-to-end encrypted chat with
//! the inviter, signed by the inviter's identity key, with an expiry.

use openmls::prelude::{Ciphersuite, KeyPackage, OpenMlsProvider};
use openmls_traits::{crypto::OpenMlsCrypto, random::OpenMlsRand};
use prost::Message;
use tamizdat_wire::{
    limits::ID_LEN,
    link::{LinkKind, armor, dearmor},
    proto::RelayDescriptor,
};

use crate::{
    E2eError, Identity, key_packages, mls_err,
    proto::{InviteBody, SignedInvite},
    seal,
};

const VERSION: u32 = 1;
const SIGNATURE_LABEL: &[u8] = b"tamizdat-invite-v1\0";

/// What the inviter keeps to recognise and open the answer to an invite.
#[derive(Clone, Debug)]
pub struct InviteSecrets {
    /// Random id of the invite, echoed in the join request.
    pub invite_id: Vec<u8>,
    /// Private half of the box key the join request is sealed to.
    pub box_private: Vec<u8>,
    /// Unix seconds after which the invite is refused.
    pub expires_at: u64,
}

/// The parameters of a new invite.
pub struct InviteParams<'a> {
    /// The inviter's relays, the first one hosting `send_id`.
    pub relays: Vec<RelayDescriptor>,
    /// Capability to send to the inviter's contact queue.
    pub send_id: &'a [u8],
    /// Unix seconds after which the invite is refused.
    pub expires_at: u64,
}

/// Creates an invite link. The KeyPackage's private keys go into the provider's storage.
pub fn create<P: OpenMlsProvider>(
    provider: &P,
    identity: &Identity,
    suite: Ciphersuite,
    params: InviteParams<'_>,
) -> Result<(String, InviteSecrets), E2eError> {
    let key_package = key_packages::generate(provider, identity, suite, false)?.bytes;
    let (box_private, box_key) = seal::box_keypair(provider, suite)?;
    let invite_id = provider.rand().random_vec(ID_LEN).map_err(mls_err)?;
    let body = InviteBody {
        version: VERSION,
        relays: params.relays,
        send_id: params.send_id.to_vec(),
        key_package,
        identity_key: identity.public_key().to_vec(),
        box_key,
        invite_id: invite_id.clone(),
        expires_at: params.expires_at,
        ciphersuite: u32::from(u16::from(suite)),
    }
    .encode_to_vec();
    let signature = identity.sign(&signed_bytes(&body))?;
    let link = armor(LinkKind::Invite, &SignedInvite { body, signature }.encode_to_vec());
    Ok((link, InviteSecrets { invite_id, box_private, expires_at: params.expires_at }))
}

fn signed_bytes(body: &[u8]) -> Vec<u8> {
    [SIGNATURE_LABEL, body].concat()
}

/// An invite whose signature, fields and KeyPackage have been checked.
#[derive(Debug)]
pub struct VerifiedInvite {
    /// The signed contents.
    pub body: InviteBody,
    /// The inviter's validated KeyPackage.
    pub key_package: KeyPackage,
    /// The conversation's ciphersuite.
    pub suite: Ciphersuite,
}

/// Checks an invite link: checksum, signature by the identity key inside it, fields,
/// expiry against `now` (Unix seconds) and the KeyPackage, which must belong to that key.
pub fn verify<P: OpenMlsProvider>(provider: &P, link: &str, now: u64) -> Result<VerifiedInvite, E2eError> {
    let bytes = dearmor(LinkKind::Invite, link)?;
    let signed = SignedInvite::decode(bytes.as_slice()).map_err(|_| bad("undecodable"))?;
    let body = InviteBody::decode(signed.body.as_slice()).map_err(|_| bad("undecodable body"))?;
    if body.version != VERSION {
        return Err(bad("made by an incompatible version of Tamizdat"));
    }
    let suite = u16::try_from(body.ciphersuite)
        .ok()
        .and_then(|cs| Ciphersuite::try_from(cs).ok())
        .ok_or_else(|| bad("unknown ciphersuite"))?;
    provider
        .crypto()
        .verify_signature(
            suite.signature_algorithm(),
            &signed_bytes(&signed.body),
            &body.identity_key,
            &signed.signature,
        )
        .map_err(|_| bad("its signature does not match"))?;
    if body.relays.is_empty() {
        return Err(bad("it names no relay"));
    }
    for relay in &body.relays {
        relay.validate()?;
    }
    if body.send_id.len() != ID_LEN || body.invite_id.len() != ID_LEN || body.box_key.is_empty() {
        return Err(bad("a field has the wrong length"));
    }
    if now >= body.expires_at {
        return Err(E2eError::ExpiredInvite);
    }
    let key_package = key_packages::validate(provider, &body.key_package, &body.identity_key)
        .map_err(|e| bad(&e.to_string().replace("MLS: ", "")))?;
    if key_package.ciphersuite() != suite {
        return Err(bad("the KeyPackage uses another ciphersuite"));
    }
    Ok(VerifiedInvite { body, key_package, suite })
}

fn bad(why: &str) -> E2eError {
    E2eError::BadInvite(why.to_string())
}
