//! A conversation is an MLS group; a 1:1 chat is a group of two.
//!
//! Commits follow the Delivery Service rule: a commit is created pending, sent to the relay,
//! and merged only once the relay accepted it for its epoch ([`Conversation::confirm_commit`]);
//! if another commit won the epoch, it is dropped ([`Conversation::abort_commit`]).

use openmls::prelude::{
    BasicCredential, Ciphersuite, CredentialType, GroupId, KeyPackage, MergeCommitError, MlsGroup,
    MlsGroupCreateConfig, MlsGroupJoinConfig, MlsMessageBodyIn, MlsMessageIn, OpenMlsProvider, ProcessMessageError,
    ProcessedMessageContent, ProtocolMessage, SenderRatchetConfiguration, StagedWelcome,
    tls_codec::{Deserialize as _, Serialize as _},
};

use crate::{E2eError, Identity, content::Content, mls_err};

/// How many past epochs' keys a member keeps, to read messages that were sent just before a
/// commit it has already applied.
const MAX_PAST_EPOCHS: usize = 5;
/// Messages are padded inside MLS to a multiple of this many bytes.
const PADDING: usize = 32;

/// What an incoming log entry turned out to be.
#[derive(Debug)]
pub enum Incoming {
    /// Content from another member, with that member's identity key.
    Content {
        /// The sender's identity (signature) key.
        sender: Vec<u8>,
        /// The decrypted content.
        content: Content,
    },
    /// A commit from another member was applied; the group is now in this epoch.
    Commit {
        /// The new epoch.
        epoch: u64,
    },
    /// Our own message coming back from the relay.
    Own,
}

/// An MLS group and the operations Tamizdat uses.
pub struct Conversation {
    group: MlsGroup,
}

fn ratchet_config() -> SenderRatchetConfiguration {
    // Tolerate some reordering and gaps within an epoch (lost or late messages).
    SenderRatchetConfiguration::new(64, 1000)
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .padding_size(PADDING)
        .sender_ratchet_configuration(ratchet_config())
        .build()
}

impl Conversation {
    /// Starts a two-member conversation with the owner of `peer`. Returns the conversation with
    /// a pending commit, the commit and the Welcome for the peer.
    pub fn start<P: OpenMlsProvider>(
        provider: &P,
        identity: &Identity,
        suite: Ciphersuite,
        peer: KeyPackage,
    ) -> Result<(Self, Vec<u8>, Vec<u8>), E2eError> {
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(suite)
            .use_ratchet_tree_extension(true)
            .max_past_epochs(MAX_PAST_EPOCHS)
            .padding_size(PADDING)
            .sender_ratchet_configuration(ratchet_config())
            .build();
        let mut group =
            MlsGroup::new(provider, identity.signer(), &config, identity.credential().clone()).map_err(mls_err)?;
        let (commit, welcome, _info) = group.add_members(provider, identity.signer(), &[peer]).map_err(mls_err)?;
        let commit = commit.tls_serialize_detached().map_err(mls_err)?;
        let welcome = welcome.tls_serialize_detached().map_err(mls_err)?;
        Ok((Self { group }, commit, welcome))
    }

    /// Joins from a Welcome addressed to one of our KeyPackages.
    pub fn join<P: OpenMlsProvider>(provider: &P, welcome: &[u8]) -> Result<Self, E2eError> {
        let msg = MlsMessageIn::tls_deserialize_exact(welcome).map_err(mls_err)?;
        let MlsMessageBodyIn::Welcome(welcome) = msg.extract() else {
            return Err(E2eError::Mls("not a Welcome".into()));
        };
        let staged = StagedWelcome::new_from_welcome(provider, &join_config(), welcome, None).map_err(mls_err)?;
        let group = staged.into_group(provider).map_err(mls_err)?;
        let conv = Self { group };
        conv.check_credentials()?;
        Ok(conv)
    }

    /// Loads a conversation from the provider's storage.
    pub fn load<P: OpenMlsProvider>(provider: &P, group_id: &[u8]) -> Result<Option<Self>, E2eError> {
        let group = MlsGroup::load(provider.storage(), &GroupId::from_slice(group_id))
            .map_err(|e| E2eError::Storage(format!("{e:?}")))?;
        Ok(group.map(|group| Self { group }))
    }

    /// The MLS group id.
    pub fn group_id(&self) -> Vec<u8> {
        self.group.group_id().as_slice().to_vec()
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.group.epoch().as_u64()
    }

    /// The identity keys of the other members.
    pub fn peers(&self, own: &[u8]) -> Vec<Vec<u8>> {
        self.group.members().map(|m| m.signature_key).filter(|k| k.as_slice() != own).collect()
    }

    /// Merges our pending commit after the relay accepted it.
    pub fn confirm_commit<P: OpenMlsProvider>(&mut self, provider: &P) -> Result<(), E2eError> {
        self.group.merge_pending_commit(provider).map_err(mls_err)
    }

    /// Drops our pending commit after the relay refused it.
    pub fn abort_commit<P: OpenMlsProvider>(&mut self, provider: &P) -> Result<(), E2eError> {
        self.group.clear_pending_commit(provider.storage()).map_err(mls_err)
    }

    /// Encrypts content for the group.
    pub fn encrypt<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        identity: &Identity,
        content: &Content,
    ) -> Result<Vec<u8>, E2eError> {
        let msg = self.group.create_message(provider, identity.signer(), &content.to_bytes()).map_err(mls_err)?;
        msg.tls_serialize_detached().map_err(mls_err)
    }

    /// Processes one message from the conversation's log.
    pub fn process<P: OpenMlsProvider>(&mut self, provider: &P, bytes: &[u8]) -> Result<Incoming, E2eError> {
        let msg = MlsMessageIn::tls_deserialize_exact(bytes).map_err(mls_err)?;
        let protocol: ProtocolMessage = msg.try_into_protocol_message().map_err(mls_err)?;
        // A storage failure is ours, not the message's: the caller must not skip the entry.
        let processed = self.group.process_message(provider, protocol).map_err(|e| match e {
            ProcessMessageError::StorageError(e) => E2eError::Storage(format!("{e:?}")),
            e => mls_err(e),
        })?;
        let sender = processed.credential().clone();
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                let sender = basic_identity(&sender)?;
                let content = Content::from_bytes(&app.into_bytes())?;
                Ok(Incoming::Content { sender, content })
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                for added in staged.add_proposals() {
                    let leaf = added.add_proposal().key_package().leaf_node();
                    check_credential(leaf.credential(), leaf.signature_key().as_slice())?;
                }
                self.group.merge_staged_commit(provider, *staged).map_err(|e| match e {
                    MergeCommitError::StorageError(e) => E2eError::Storage(format!("{e:?}")),
                    e => mls_err(e),
                })?;
                // An update path can replace a member's credential: check everyone again.
                self.check_credentials()?;
                Ok(Incoming::Commit { epoch: self.epoch() })
            }
            ProcessedMessageContent::OwnPrivateMessage => Ok(Incoming::Own),
            other => Err(E2eError::Mls(format!("unexpected message: {other:?}"))),
        }
    }

    /// Every member's credential must be a basic credential naming its own signature key, so
    /// that the key people verify is the key that signs.
    fn check_credentials(&self) -> Result<(), E2eError> {
        for m in self.group.members() {
            check_credential(&m.credential, m.signature_key.as_slice())?;
        }
        Ok(())
    }
}

fn basic_identity(credential: &openmls::prelude::Credential) -> Result<Vec<u8>, E2eError> {
    let basic = BasicCredential::try_from(credential.clone()).map_err(mls_err)?;
    Ok(basic.identity().to_vec())
}

fn check_credential(credential: &openmls::prelude::Credential, signature_key: &[u8]) -> Result<(), E2eError> {
    if credential.credential_type() != CredentialType::Basic {
        return Err(E2eError::Mls("a member has a non-basic credential".into()));
    }
    let basic = BasicCredential::try_from(credential.clone()).map_err(mls_err)?;
    if basic.identity() != signature_key {
        return Err(E2eError::Mls("a member's credential does not name its own key".into()));
    }
    Ok(())
}
