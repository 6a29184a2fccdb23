//! A person's identity on one device: an MLS signature key pair and its basic credential.

use openmls::prelude::{BasicCredential, Ciphersuite, CredentialWithKey, OpenMlsProvider};
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::signatures::Signer;

use crate::{E2eError, mls_err};

/// The signing identity. The credential's identity bytes are the public key itself: there
/// is nothing else (no name, no number) to put there.
pub struct Identity {
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
}

impl Identity {
    /// Creates a new identity and stores its private key in the provider's storage.
    pub fn create<P: OpenMlsProvider>(provider: &P, suite: Ciphersuite) -> Result<Self, E2eError> {
        let signer = SignatureKeyPair::new(suite.signature_algorithm()).map_err(mls_err)?;
        signer.store(provider.storage()).map_err(|e| E2eError::Storage(format!("{e:?}")))?;
        Ok(Self::from_signer(signer))
    }

    /// Loads the identity with this public key from the provider's storage.
    pub fn load<P: OpenMlsProvider>(provider: &P, public_key: &[u8], suite: Ciphersuite) -> Result<Self, E2eError> {
        let signer = SignatureKeyPair::read(provider.storage(), public_key, suite.signature_algorithm())
            .ok_or_else(|| E2eError::Storage("the identity key is missing from the store".into()))?;
        Ok(Self::from_signer(signer))
    }

    fn from_signer(signer: SignatureKeyPair) -> Self {
        let credential = CredentialWithKey {
            credential: BasicCredential::new(signer.to_public_vec()).into(),
            signature_key: signer.to_public_vec().into(),
        };
        Self { signer, credential }
    }

    /// The public identity key people verify.
    pub fn public_key(&self) -> &[u8] {
        self.signer.public()
    }

    /// The MLS signer.
    pub fn signer(&self) -> &SignatureKeyPair {
        &self.signer
    }

    /// The credential with its key, for KeyPackages and groups.
    pub fn credential(&self) -> &CredentialWithKey {
        &self.credential
    }

    /// Signs bytes with the identity key (used for invites).
    pub fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, E2eError> {
        self.signer.sign(payload).map_err(mls_err)
    }
}
