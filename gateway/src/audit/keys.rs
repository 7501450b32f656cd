//! The key audit records and checkpoints are signed with: HMAC-SHA256 under a secret the database
//! does not hold (`PAC_AUDIT_KEY`). Whoever can add rows to the trail (the gateway's own role, or
//! anyone with the database) cannot make a record or a checkpoint that verifies without it.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The development key, published here; production refuses it.
pub const DEVELOPMENT_AUDIT_KEY: &str = "pac-development-audit-key-published-in-the-source";
/// Shortest key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

/// A signing key and its id (a fingerprint, stored with what it signs so that verification knows
/// which key to use; several may be given while keys are rotated).
#[derive(Clone)]
pub struct AuditKey {
    id: String,
    secret: Vec<u8>,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKey").field("id", &self.id).finish_non_exhaustive()
    }
}

impl AuditKey {
    pub fn new(secret: &[u8]) -> Self {
        let digest = Sha256::digest([b"pac-audit-key-id:".as_slice(), secret].concat());
        Self { id: hex(&digest[..8]), secret: secret.to_vec() }
    }

    pub fn development() -> Self {
        Self::new(DEVELOPMENT_AUDIT_KEY.as_bytes())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// HMAC-SHA256 of `data`, hex.
    pub fn sign(&self, data: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes a key of any length");
        mac.update(data);
        hex(&mac.finalize().into_bytes())
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        write!(out, "{b:02x}").expect("writing to a string");
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_depend_on_the_key_and_ids_tell_keys_apart() {
        let (a, b) = (AuditKey::new(b"a key of thirty-two bytes or more!!"), AuditKey::new(b"another key of thirty-two bytes!!!"));
        assert_eq!(a.sign(b"record").len(), 64);
        assert_eq!(a.sign(b"record"), a.sign(b"record"));
        assert_ne!(a.sign(b"record"), b.sign(b"record"));
        assert_ne!(a.sign(b"record"), a.sign(b"recorD"));
        assert_ne!(a.id(), b.id());
        assert_eq!(a.id().len(), 16);
        assert!(!format!("{a:?}").contains("thirty"), "the secret is never printed");
    }
}
