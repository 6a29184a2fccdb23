//! Safety numbers: comparing identity keys out of band, and noticing when a contact's key
//! changes.
//!
//! A safety number is derived from both identity keys, so both people see the same 60 digits
//! and the same QR code. Each key contributes 30 digits from an iterated SHA-512 of the key;
//! the two halves are put in sorted order, so neither side's view depends on who looks. The
//! iteration makes a key whose digits match another's costly to search for.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha512};

use crate::{
    Client, ClientError,
    engine::{ConvRow, now_ms, to_i64, to_u64},
};

/// Hash rounds per half: the cost of each guess when searching for a look-alike key.
const ROUNDS: usize = 5200;
/// Domain separation and version of the derivation.
const VERSION: &[u8] = b"tamizdat safety number 1";

/// One key's 30 digits.
fn half(key: &[u8]) -> String {
    let mut digest = Sha512::digest([VERSION, key].concat()).to_vec();
    for _ in 1..ROUNDS {
        digest = Sha512::new().chain_update(&digest).chain_update(key).finalize().to_vec();
    }
    digest[..30]
        .chunks(5)
        .map(|chunk| {
            let n = chunk.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            format!("{:05}", n % 100_000)
        })
        .collect()
}

/// The 60-digit safety number of two identity keys, the same whichever is first.
pub fn safety_number(a: &[u8], b: &[u8]) -> String {
    let (mut x, mut y) = (half(a), half(b));
    if x > y {
        std::mem::swap(&mut x, &mut y);
    }
    x + &y
}

/// What `tamizdat verify` shows.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyView {
    /// The contact.
    pub contact: String,
    /// 60 digits; people read them in 12 groups of five.
    pub safety_number: String,
    /// What the QR code encodes: the version and the digits.
    pub qr_payload: String,
    /// The user compared the numbers and marked the contact verified.
    pub verified: bool,
    /// Unix milliseconds the contact's key changed, while the user has not acknowledged it.
    pub key_changed_at: Option<u64>,
    /// Our identity key (hex).
    pub own_key: String,
    /// Theirs (hex).
    pub their_key: String,
}

impl VerifyView {
    /// The digits in groups of five, four groups to a line.
    pub fn grouped(&self) -> String {
        let groups: Vec<&str> =
            (0..self.safety_number.len()).step_by(5).filter_map(|i| self.safety_number.get(i..i + 5)).collect();
        groups.chunks(4).map(|line| line.join(" ")).collect::<Vec<_>>().join("\n")
    }
}

/// The warning that must be seen before sending into `c`, if its contact's key changed and
/// the user has not acknowledged it.
pub(crate) fn unacknowledged_change(conn: &Connection, c: &ConvRow) -> Result<Option<String>, ClientError> {
    let Some(contact) = c.contact_id.filter(|_| !c.is_group) else { return Ok(None) };
    let changed: Option<(String, Option<i64>)> = conn
        .query_row("SELECT name, key_changed_at FROM contacts WHERE id = ?1", [contact], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(match changed {
        Some((name, Some(_))) => Some(format!(
            "{name}'s safety number changed: they may have a new device, or someone may be impersonating them. \
             Compare numbers with `tamizdat verify {name}`, then run `tamizdat verify {name} --mark` if they match \
             (or `--accept` to go on without comparing)"
        )),
        _ => None,
    })
}

/// Records that the contact known as `contact_id` now has `new_key`: the old key is kept for
/// the record, verification is reset, and sending waits until the user acknowledges it.
pub(crate) fn record_key_change(tx: &Connection, contact_id: i64, new_key: &[u8]) -> Result<(), ClientError> {
    tx.execute(
        "UPDATE contacts SET previous_key = identity_key, identity_key = ?1, verified = 0, key_changed_at = ?2 WHERE id = ?3",
        params![new_key, to_i64(now_ms()), contact_id],
    )?;
    // The conversations with the old key are closed: what is sent goes to the new one.
    tx.execute(
        "UPDATE conversations SET state = 'left' WHERE kind = 'direct' AND contact_id = ?1 AND state = 'active'",
        [contact_id],
    )?;
    Ok(())
}

impl Client {
    /// The safety number shared with a contact, and its verification state.
    pub fn verify(&self, name: &str) -> Result<VerifyView, ClientError> {
        let contact = self.contact(name)?;
        let (verified, key_changed_at): (bool, Option<i64>) =
            self.conn.query_row("SELECT verified, key_changed_at FROM contacts WHERE id = ?1", [contact.id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let number = safety_number(&self.profile.identity_key, &contact.identity_key);
        Ok(VerifyView {
            contact: contact.name,
            qr_payload: format!("tamizdat:verify/1/{number}"),
            safety_number: number,
            verified,
            key_changed_at: key_changed_at.map(to_u64),
            own_key: hex::encode(&self.profile.identity_key),
            their_key: hex::encode(&contact.identity_key),
        })
    }

    /// Marks a contact verified (after comparing safety numbers) or not; marking also
    /// acknowledges a key change.
    pub fn mark_verified(&mut self, name: &str, verified: bool) -> Result<VerifyView, ClientError> {
        let contact = self.contact(name)?;
        let sql = if verified {
            "UPDATE contacts SET verified = 1, key_changed_at = NULL WHERE id = ?1"
        } else {
            "UPDATE contacts SET verified = 0 WHERE id = ?1"
        };
        self.conn.execute(sql, [contact.id])?;
        self.verify(name)
    }

    /// Acknowledges a contact's key change without verifying: sending works again, and the
    /// contact stays unverified.
    pub fn accept_key_change(&mut self, name: &str) -> Result<VerifyView, ClientError> {
        let contact = self.contact(name)?;
        self.conn.execute("UPDATE contacts SET key_changed_at = NULL WHERE id = ?1", [contact.id])?;
        self.verify(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_get_the_same_number() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let n = safety_number(&a, &b);
        assert_eq!(n, safety_number(&b, &a));
        assert_eq!(n.len(), 60);
        assert!(n.chars().all(|c| c.is_ascii_digit()));
        assert_ne!(n, safety_number(&a, &[3u8; 32]));
    }
}
