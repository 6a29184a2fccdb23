//! HPKE sealing with the ciphersuite's own KEM, for messages to a queue (join requests).
//! Only the holder of the box key's private half can open them; the relay sees ciphertext.

use openmls::prelude::{Ciphersuite, OpenMlsProvider};
use openmls_traits::{crypto::OpenMlsCrypto, random::OpenMlsRand, types::HpkeCiphertext};
use prost::Message;

use crate::{E2eError, mls_err, proto::Sealed};

const INFO: &[u8] = b"tamizdat seal v1";

/// A fresh box key pair: `(private, public)`.
pub fn box_keypair<P: OpenMlsProvider>(provider: &P, suite: Ciphersuite) -> Result<(Vec<u8>, Vec<u8>), E2eError> {
    let ikm = provider.rand().random_vec(32).map_err(mls_err)?;
    let kp = provider.crypto().derive_hpke_keypair(suite.hpke_config(), &ikm).map_err(mls_err)?;
    let private: &[u8] = kp.private.as_ref();
    Ok((private.to_vec(), kp.public))
}

/// Seals `plaintext` to a box public key. `aad` binds context (e.g. the invite id).
pub fn seal<P: OpenMlsProvider>(
    provider: &P,
    suite: Ciphersuite,
    public: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, E2eError> {
    let ct = provider.crypto().hpke_seal(suite.hpke_config(), public, INFO, aad, plaintext).map_err(mls_err)?;
    Ok(Sealed { kem_output: ct.kem_output.as_slice().to_vec(), ciphertext: ct.ciphertext.as_slice().to_vec() }
        .encode_to_vec())
}

/// Opens a sealed message with the box private key.
pub fn open<P: OpenMlsProvider>(
    provider: &P,
    suite: Ciphersuite,
    private: &[u8],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, E2eError> {
    let sealed = Sealed::decode(sealed).map_err(|_| E2eError::Unseal("undecodable".into()))?;
    let input = HpkeCiphertext { kem_output: sealed.kem_output.into(), ciphertext: sealed.ciphertext.into() };
    provider
        .crypto()
        .hpke_open(suite.hpke_config(), &input, private, INFO, aad)
        .map_err(|e| E2eError::Unseal(format!("{e:?}")))
}
