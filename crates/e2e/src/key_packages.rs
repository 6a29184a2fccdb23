//! KeyPackages: what a member needs from someone to add them to a group.
//!
//! Tamizdat hands KeyPackages to contacts inside the 1:1 conversation (never to the relay),
//! so the relay cannot learn who is able to add whom. Each contact gets a few one-time
//! packages and one last-resort package per ciphersuite; the owner replaces a one-time
//! package when a Welcome shows it was used.

use openmls::prelude::{
    BasicCredential, Capabilities, Ciphersuite, ExtensionType, KeyPackage, KeyPackageIn, MlsMessageBodyIn,
    MlsMessageIn, OpenMlsProvider, ProtocolVersion,
    tls_codec::{Deserialize as _, Serialize as _},
};

use crate::{E2eError, Identity, mls_err};

/// A fresh KeyPackage of ours.
pub struct OwnKeyPackage {
    /// TLS-serialized, to give to a contact.
    pub bytes: Vec<u8>,
    /// Its hash reference, which a Welcome names when it is used.
    pub hash_ref: Vec<u8>,
}

/// Creates a KeyPackage; its private keys go into the provider's storage. A last-resort
/// package survives being used, so a contact who has run out of one-time packages can still
/// add us.
pub fn generate<P: OpenMlsProvider>(
    provider: &P,
    identity: &Identity,
    suite: Ciphersuite,
    last_resort: bool,
) -> Result<OwnKeyPackage, E2eError> {
    // Every leaf says it understands the last-resort marker, so a package carrying it is valid.
    let capabilities = Capabilities::new(None, None, Some(&[ExtensionType::LastResort]), None, None);
    let mut builder = KeyPackage::builder().leaf_node_capabilities(capabilities);
    if last_resort {
        builder = builder.mark_as_last_resort();
    }
    let bundle = builder.build(suite, provider, identity.signer(), identity.credential().clone()).map_err(mls_err)?;
    let kp = bundle.key_package();
    Ok(OwnKeyPackage {
        bytes: kp.tls_serialize_detached().map_err(mls_err)?,
        hash_ref: kp.hash_ref(provider.crypto()).map_err(mls_err)?.as_slice().to_vec(),
    })
}

/// Decodes and validates someone's KeyPackage (signature, lifetime, capabilities) and checks
/// that it belongs to `owner`: its signature key and its credential are that identity key.
pub fn validate<P: OpenMlsProvider>(provider: &P, bytes: &[u8], owner: &[u8]) -> Result<KeyPackage, E2eError> {
    let key_package = KeyPackageIn::tls_deserialize_exact(bytes)
        .map_err(|_| E2eError::Mls("undecodable KeyPackage".into()))?
        .validate(provider.crypto(), ProtocolVersion::Mls10)
        .map_err(|e| E2eError::Mls(format!("invalid KeyPackage: {e:?}")))?;
    let leaf = key_package.leaf_node();
    if leaf.signature_key().as_slice() != owner {
        return Err(E2eError::Mls("the KeyPackage belongs to another identity".into()));
    }
    let named = BasicCredential::try_from(leaf.credential().clone()).map(|c| c.identity() == owner).unwrap_or(false);
    if !named {
        return Err(E2eError::Mls("the KeyPackage's credential names another identity".into()));
    }
    Ok(key_package)
}

/// The hash references of the KeyPackages a Welcome was made for.
pub fn welcome_targets(welcome: &[u8]) -> Result<Vec<Vec<u8>>, E2eError> {
    let msg = MlsMessageIn::tls_deserialize_exact(welcome).map_err(mls_err)?;
    let MlsMessageBodyIn::Welcome(welcome) = msg.extract() else {
        return Err(E2eError::Mls("not a Welcome".into()));
    };
    Ok(welcome.secrets().iter().map(|s| s.new_member().as_slice().to_vec()).collect())
}
