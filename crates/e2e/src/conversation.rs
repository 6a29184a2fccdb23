//! A conversation is an MLS group; a 1:1 chat is a group of two.
//!
//! Commits follow the Delivery Service rule: a commit is created pending, sent to the relay,
//! and merged only once the relay accepted it for its epoch ([`Conversation::confirm_commit`]);
//! if another commit won the epoch, it is dropped ([`Conversation::abort_commit`]).

use openmls::prelude::{
    BasicCredential, Ciphersuite, CredentialType, GroupId, KeyPackage, LeafNodeParameters, MergeCommitError, MlsGroup,
    MlsGroupCreateConfig, MlsGroupJoinConfig, MlsMessageBodyIn, MlsMessageIn, OpenMlsProvider, ProcessMessageError,
    ProcessedMessageContent, ProtocolMessage, SenderRatchetConfiguration, StagedWelcome,
    tls_codec::{Deserialize as _, Serialize as _},
};

use crate::{E2eError, Identity, content::Content, mls_err};

/// Keys of past epochs kept. None: the relay refuses messages of a past epoch (their sender
/// encrypts again), so nothing is ever read with an old epoch's keys. OpenMLS stores the past
/// epochs' member lists with every message sent or read, a cost that grows with the group.
const MAX_PAST_EPOCHS: usize = 0;
/// Messages are padded inside MLS to a multiple of this many bytes.
const PADDING: usize = 32;

/// What an incoming log entry turned out to be.
// Made and consumed once per entry, never collected: boxing the content would only add an
// allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Incoming {
    /// Content from another member, with that member's identity key.
    Content {
        /// The sender's identity (signature) key.
        sender: Vec<u8>,
        /// The decrypted content.
        content: Content,
    },
    /// A commit from another member was applied.
    Commit(CommitSummary),
    /// Our own message coming back from the relay.
    Own,
}

/// What a commit changed, for the events members see.
#[derive(Debug, Default, Clone)]
pub struct CommitSummary {
    /// The epoch the group is in after the commit.
    pub epoch: u64,
    /// The identity key of the member who committed.
    pub committer: Vec<u8>,
    /// Identity keys of the members it added.
    pub added: Vec<Vec<u8>>,
    /// Identity keys of the members it removed.
    pub removed: Vec<Vec<u8>>,
    /// We were removed: the group is closed for us.
    pub removed_us: bool,
}

/// A commit of ours waiting for the relay, and the Welcome that goes with it once accepted.
#[derive(Debug)]
pub struct Outgoing {
    /// The commit, for the group's log.
    pub commit: Vec<u8>,
    /// The Welcome for added members, if any were added.
    pub welcome: Option<Vec<u8>>,
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
    /// Creates a group with only us in it.
    pub fn create<P: OpenMlsProvider>(provider: &P, identity: &Identity, suite: Ciphersuite) -> Result<Self, E2eError> {
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(suite)
            .use_ratchet_tree_extension(true)
            .max_past_epochs(MAX_PAST_EPOCHS)
            .padding_size(PADDING)
            .sender_ratchet_configuration(ratchet_config())
            .build();
        let group =
            MlsGroup::new(provider, identity.signer(), &config, identity.credential().clone()).map_err(mls_err)?;
        Ok(Self { group })
    }

    /// Starts a two-member conversation with the owner of `peer`. Returns the conversation with
    /// a pending commit, the commit and the Welcome for the peer.
    pub fn start<P: OpenMlsProvider>(
        provider: &P,
        identity: &Identity,
        suite: Ciphersuite,
        peer: KeyPackage,
    ) -> Result<(Self, Vec<u8>, Vec<u8>), E2eError> {
        let mut conv = Self::create(provider, identity, suite)?;
        let out = conv.add(provider, identity, &[peer])?;
        let welcome = out.welcome.ok_or_else(|| E2eError::Mls("adding a member made no Welcome".into()))?;
        Ok((conv, out.commit, welcome))
    }

    /// Adds members by their KeyPackages: a pending commit (without an update path) and its
    /// Welcome.
    pub fn add<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        identity: &Identity,
        key_packages: &[KeyPackage],
    ) -> Result<Outgoing, E2eError> {
        // No update path: an add-only commit needs none (RFC 9420, 12.4), and a path would be
        // encrypted to every member not yet merged into the tree, which makes the commits that
        // build a large group grow with its size (1.2 KB per member with the post-quantum suite).
        let (commit, welcome, _info) =
            self.group.add_members_without_update(provider, identity.signer(), key_packages).map_err(mls_err)?;
        Ok(Outgoing {
            commit: commit.tls_serialize_detached().map_err(mls_err)?,
            welcome: Some(welcome.tls_serialize_detached().map_err(mls_err)?),
        })
    }

    /// Removes the members with these identity keys: a pending commit, or `None` if none of
    /// them is a member (any more).
    pub fn remove<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        identity: &Identity,
        keys: &[Vec<u8>],
    ) -> Result<Option<Outgoing>, E2eError> {
        let leaves: Vec<_> = self
            .group
            .members()
            .filter(|m| keys.iter().any(|k| k.as_slice() == m.signature_key.as_slice()))
            .map(|m| m.index)
            .collect();
        if leaves.is_empty() {
            return Ok(None);
        }
        let (commit, _welcome, _info) =
            self.group.remove_members(provider, identity.signer(), &leaves).map_err(mls_err)?;
        Ok(Some(Outgoing { commit: commit.tls_serialize_detached().map_err(mls_err)?, welcome: None }))
    }

    /// Replaces our leaf's keys (post-compromise security): a pending commit. Whoever copied our
    /// state before this cannot follow the group past it.
    pub fn self_update<P: OpenMlsProvider>(&mut self, provider: &P, identity: &Identity) -> Result<Outgoing, E2eError> {
        let bundle =
            self.group.self_update(provider, identity.signer(), LeafNodeParameters::default()).map_err(mls_err)?;
        let (commit, _welcome, _info) = bundle.into_contents();
        Ok(Outgoing { commit: commit.tls_serialize_detached().map_err(mls_err)?, welcome: None })
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

    /// Every member's identity key, in leaf order (the first is the lowest leaf).
    pub fn members(&self) -> Vec<Vec<u8>> {
        self.group.members().map(|m| m.signature_key).collect()
    }

    /// The group's ciphersuite.
    pub fn suite(&self) -> Ciphersuite {
        self.group.ciphersuite()
    }

    /// False once we have been removed.
    pub fn is_active(&self) -> bool {
        self.group.is_active()
    }

    /// True while a commit of ours waits for the relay's verdict.
    pub fn has_pending_commit(&self) -> bool {
        self.group.pending_commit().is_some()
    }

    /// Erases the group's keys from storage (after leaving): nothing of it can be decrypted
    /// with this device's state any more.
    pub fn delete<P: OpenMlsProvider>(mut self, provider: &P) -> Result<(), E2eError> {
        self.group.delete(provider.storage()).map_err(|e| E2eError::Storage(format!("{e:?}")))
    }

    /// Merges our pending commit after the relay accepted it.
    pub fn confirm_commit<P: OpenMlsProvider>(&mut self, provider: &P) -> Result<(), E2eError> {
        // OpenMLS accepts a merge without a pending commit as a no-op; for us it means the
        // commit the relay took is lost, which must not pass unnoticed.
        if !self.has_pending_commit() {
            return Err(E2eError::Mls("no pending commit to merge".into()));
        }
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
                let mut summary = CommitSummary { committer: basic_identity(&sender)?, ..CommitSummary::default() };
                for added in staged.add_proposals() {
                    let leaf = added.add_proposal().key_package().leaf_node();
                    check_credential(leaf.credential(), leaf.signature_key().as_slice())?;
                    summary.added.push(leaf.signature_key().as_slice().to_vec());
                }
                // Who is removed must be read before the merge takes them out of the tree.
                for removed in staged.remove_proposals() {
                    if let Some(m) = self.group.member_at(removed.remove_proposal().removed()) {
                        summary.removed.push(m.signature_key);
                    }
                }
                summary.removed_us = staged.self_removed();
                self.group.merge_staged_commit(provider, *staged).map_err(|e| match e {
                    MergeCommitError::StorageError(e) => E2eError::Storage(format!("{e:?}")),
                    e => mls_err(e),
                })?;
                summary.epoch = self.epoch();
                if !summary.removed_us {
                    // An update path can replace a member's credential: check everyone again.
                    self.check_credentials()?;
                }
                Ok(Incoming::Commit(summary))
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
