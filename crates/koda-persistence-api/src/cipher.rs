//! Encryption at rest: the key file every backend reads, and (feature
//! `field-cipher`) the field cipher that seals free text before it reaches
//! a store that cannot encrypt its own files (sled, PostgreSQL).
//!
//! **The key file.** A key file is private to its owner (no group or other
//! permission bits) and holds either exactly 32 bytes (a raw 256-bit key)
//! or a passphrase (its first line). The key never appears in a URL, an
//! error, a log line or `Debug` output. [`read_key_file`] is the one place
//! this crate reads a file.
//!
//! **The field cipher.** Each sealed value is
//! `0xE1 ‖ 24-byte random nonce ‖ XChaCha20-Poly1305 ciphertext and tag`,
//! 41 bytes longer than its plaintext. The associated data names the row
//! the value belongs to (the backend builds it with [`aad`]: a session id
//! and a message id, a session id and a metadata key, a body's address),
//! so a value copied to another row fails to open: `Corrupt`, never the
//! other row's text. From the store key come three keys: one seals, one
//! addresses stored-once bodies ([`FieldCipher::address`], an HMAC-SHA256
//! of the text, never a plain hash an attacker could confirm a guess
//! with), one checks the key at open ([`FieldCipher::unlock`]). A
//! passphrase becomes the store key by PBKDF2-HMAC-SHA256
//! ([`PASSPHRASE_ROUNDS`] rounds); the salt is random per store and kept,
//! in clear, in the key record the store holds beside its schema.

use std::fmt;
use std::path::Path;

use crate::PersistenceError;

/// The URL parameter naming a store's key file.
pub const KEY_FILE: &str = "key_file";

/// What a key file holds.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyMaterial {
    /// Exactly 32 bytes: a raw 256-bit key.
    Raw([u8; 32]),
    /// Any other content: its first line, a passphrase.
    Passphrase(String),
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyMaterial::Raw(_) => "KeyMaterial::Raw(<redacted>)",
            KeyMaterial::Passphrase(_) => "KeyMaterial::Passphrase(<redacted>)",
        })
    }
}

/// The refusal every wrong, missing or misplaced key gets: `what` (a path,
/// a schema) is left untouched.
pub fn wrong_key(what: &str) -> PersistenceError {
    PersistenceError::PermissionDenied(format!("{what}: wrong key, or not an encrypted store (left untouched)"))
}

/// Reads the key file at `path`.
///
/// # Errors
/// `PermissionDenied` (naming the mend) for a missing or unreadable file
/// or one that others may read; `InvalidInput` for an empty one or one
/// that is neither 32 bytes nor UTF-8.
pub fn read_key_file(path: &Path) -> Result<KeyMaterial, PersistenceError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        PersistenceError::PermissionDenied(format!(
            "key file {}: {e} (create it with 32 random bytes, e.g. \
             `head -c 32 /dev/urandom > FILE && chmod 600 FILE`)",
            path.display()
        ))
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(PersistenceError::PermissionDenied(format!(
                "key file {} may be read by others (mode {mode:o}): run `chmod 600 {}`",
                path.display(),
                path.display()
            )));
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    let bytes = std::fs::read(path)
        .map_err(|e| PersistenceError::PermissionDenied(format!("key file {}: {e}", path.display())))?;
    if let Ok(raw) = <[u8; 32]>::try_from(bytes.as_slice()) {
        return Ok(KeyMaterial::Raw(raw));
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        PersistenceError::InvalidInput(format!(
            "key file {}: neither 32 bytes nor a UTF-8 passphrase line",
            path.display()
        ))
    })?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if line.is_empty() {
        return Err(PersistenceError::InvalidInput(format!(
            "key file {} is empty: it holds 32 random bytes or a passphrase line",
            path.display()
        )));
    }
    Ok(KeyMaterial::Passphrase(line.to_owned()))
}

/// Associated data from `parts`, each prefixed with its `u32` big-endian
/// length so no two lists of parts give the same bytes.
pub fn aad(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| 4 + p.len()).sum());
    for p in parts {
        let len = u32::try_from(p.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}

#[cfg(feature = "field-cipher")]
pub use field::{FieldCipher, PASSPHRASE_ROUNDS, SEAL_OVERHEAD, SEALED};

#[cfg(feature = "field-cipher")]
mod field {
    use std::fmt;

    use chacha20poly1305::aead::{Aead, Generate, Payload};
    use chacha20poly1305::{XChaCha20Poly1305, XNonce};
    use hmac::{Hmac, KeyInit, Mac};
    use sha2::Sha256;

    use super::KeyMaterial;
    use crate::PersistenceError;
    use crate::bodies::BodyHash;

    /// The first byte of every sealed value.
    pub const SEALED: u8 = 0xE1;

    /// How many bytes sealing adds: the marker, the nonce, the tag.
    pub const SEAL_OVERHEAD: usize = 1 + NONCE + 16;

    /// PBKDF2-HMAC-SHA256 rounds that turn a passphrase into a store key.
    pub const PASSPHRASE_ROUNDS: u32 = 210_000;

    const NONCE: usize = 24;
    const SALT: usize = 16;
    /// The key record's marker: format 1.
    const RECORD: &[u8; 4] = b"kpk1";
    const RECORD_LEN: usize = 4 + SALT + 32;
    /// What the check key signs for the key record.
    const CHECKED: &[u8] = b"koda-persistence/v1/key record";

    /// Seals and opens a store's values, and addresses its bodies.
    #[derive(Clone)]
    pub struct FieldCipher {
        aead: XChaCha20Poly1305,
        address: [u8; 32],
        /// Keys the check value kept in the key record.
        check: [u8; 32],
        salt: [u8; SALT],
    }

    impl fmt::Debug for FieldCipher {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("FieldCipher(<redacted>)")
        }
    }

    /// HMAC-SHA256 under a 32-byte key (zero-padded to the block, as
    /// HMAC pads every short key), over `parts` in order.
    fn mac(key: &[u8; 32], parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(key);
        let mut mac = <Hmac<Sha256> as KeyInit>::new(&block.into());
        for p in parts {
            mac.update(p);
        }
        mac
    }

    /// A fresh random nonce from the operating system.
    fn random_nonce() -> Result<XNonce, PersistenceError> {
        XNonce::try_generate().map_err(|e| PersistenceError::Unavailable(format!("no randomness from the system: {e}")))
    }

    fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
        mac(key, parts).finalize().into_bytes().into()
    }

    impl FieldCipher {
        fn derive(material: &KeyMaterial, salt: [u8; SALT]) -> Self {
            let master: [u8; 32] = match material {
                KeyMaterial::Raw(k) => hmac(k, &[b"koda-persistence/v1/raw", &salt]),
                KeyMaterial::Passphrase(p) => {
                    pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(p.as_bytes(), &salt, PASSPHRASE_ROUNDS)
                }
            };
            let seal = hmac(&master, &[b"koda-persistence/v1/seal"]);
            Self {
                aead: <XChaCha20Poly1305 as KeyInit>::new(&seal.into()),
                address: hmac(&master, &[b"koda-persistence/v1/address"]),
                check: hmac(&master, &[b"koda-persistence/v1/check"]),
                salt,
            }
        }

        /// A cipher for a new store, and the key record to keep with its
        /// schema (a random salt and a check value; nothing it holds
        /// reveals the key).
        ///
        /// # Errors
        /// `Unavailable` when the system gives no randomness.
        pub fn create(material: &KeyMaterial) -> Result<(Self, Vec<u8>), PersistenceError> {
            let nonce = random_nonce()?;
            let mut salt = [0u8; SALT];
            salt.copy_from_slice(&nonce[..SALT]);
            let cipher = Self::derive(material, salt);
            let record = cipher.record();
            Ok((cipher, record))
        }

        /// The key record of this cipher.
        pub fn record(&self) -> Vec<u8> {
            let mut out = Vec::with_capacity(RECORD_LEN);
            out.extend_from_slice(RECORD);
            out.extend_from_slice(&self.salt);
            out.extend_from_slice(&hmac(&self.check, &[CHECKED]));
            out
        }

        /// The cipher `material` gives for the store whose key record is
        /// `record`.
        ///
        /// # Errors
        /// `PermissionDenied` ([`super::wrong_key`] naming `what`) when
        /// the key is not the store's; `Corrupt` for a record this build
        /// cannot read.
        pub fn unlock(material: &KeyMaterial, record: &[u8], what: &str) -> Result<Self, PersistenceError> {
            if record.len() != RECORD_LEN || !record.starts_with(RECORD) {
                return Err(PersistenceError::Corrupt(format!("{what}: the key record is not one this build reads")));
            }
            let mut salt = [0u8; SALT];
            salt.copy_from_slice(&record[4..4 + SALT]);
            let cipher = Self::derive(material, salt);
            // Compared in constant time.
            if mac(&cipher.check, &[CHECKED]).verify_slice(&record[4 + SALT..]).is_err() {
                return Err(super::wrong_key(what));
            }
            Ok(cipher)
        }

        /// `plain` sealed for the row `aad` names.
        ///
        /// # Errors
        /// `InvalidInput` when the value is too large to seal (over 256
        /// GiB: never from a store's values); `Unavailable` when the
        /// system gives no randomness.
        pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, PersistenceError> {
            let nonce = random_nonce()?;
            let sealed = self
                .aead
                .encrypt(&nonce, Payload { msg: plain, aad })
                .map_err(|_| PersistenceError::InvalidInput("a value too large to seal".into()))?;
            let mut out = Vec::with_capacity(1 + NONCE + sealed.len());
            out.push(SEALED);
            out.extend_from_slice(&nonce);
            out.extend_from_slice(&sealed);
            Ok(out)
        }

        /// The plaintext of `sealed`, which must belong to the row `aad`
        /// names.
        ///
        /// # Errors
        /// `Corrupt` naming `what` for a value that is not sealed, was
        /// changed, or belongs to another row.
        pub fn open(&self, aad: &[u8], sealed: &[u8], what: &str) -> Result<Vec<u8>, PersistenceError> {
            let corrupt = |why: &str| PersistenceError::Corrupt(format!("{what} {why}"));
            let Some((&SEALED, rest)) = sealed.split_first() else {
                return Err(corrupt("is not sealed, in a store whose values all are"));
            };
            if rest.len() < NONCE + 16 {
                return Err(corrupt("is a sealed value cut short"));
            }
            let (nonce, ciphertext) = rest.split_at(NONCE);
            let nonce = XNonce::try_from(nonce).map_err(|_| corrupt("has a bad nonce"))?;
            self.aead
                .decrypt(&nonce, Payload { msg: ciphertext, aad })
                .map_err(|_| corrupt("fails its authentication: changed, or moved from another row"))
        }

        /// The address of the body `text`: keyed, so the store's
        /// addresses say nothing about texts to whoever lacks the key.
        pub fn address(&self, text: &str) -> BodyHash {
            hmac(&self.address, &[text.as_bytes()])
        }
    }

    #[cfg(test)]
    #[allow(clippy::expect_used, clippy::unwrap_used)]
    mod tests {
        use super::*;

        fn raw(b: u8) -> KeyMaterial {
            KeyMaterial::Raw([b; 32])
        }

        #[test]
        fn seal_open_round_trips_and_binds_the_row() {
            let (c, record) = FieldCipher::create(&raw(1)).expect("random");
            let aad = crate::cipher::aad(&[b"s", b"1"]);
            let sealed = c.seal(&aad, b"secret").expect("seals");
            assert_eq!(sealed.len(), 6 + SEAL_OVERHEAD);
            assert!(!sealed.windows(6).any(|w| w == b"secret"));
            assert_eq!(c.open(&aad, &sealed, "v").expect("opens"), b"secret");
            // Two seals of one text differ (random nonce).
            assert_ne!(c.seal(&aad, b"secret").expect("seals"), sealed);
            let other = crate::cipher::aad(&[b"s", b"2"]);
            assert!(matches!(c.open(&other, &sealed, "v"), Err(PersistenceError::Corrupt(_))));
            for i in 0..sealed.len() {
                let mut bad = sealed.clone();
                bad[i] ^= 0x40;
                assert!(matches!(c.open(&aad, &bad, "v"), Err(PersistenceError::Corrupt(_))));
            }
            for cut in 0..sealed.len() {
                assert!(c.open(&aad, &sealed[..cut], "v").is_err());
            }
            // The record unlocks with the key, and only with it.
            let again = FieldCipher::unlock(&raw(1), &record, "s").expect("unlocks");
            assert_eq!(again.open(&aad, &sealed, "v").expect("opens"), b"secret");
            assert_eq!(again.address("x"), c.address("x"));
            assert!(matches!(FieldCipher::unlock(&raw(2), &record, "s"), Err(PersistenceError::PermissionDenied(_))));
            assert!(matches!(FieldCipher::unlock(&raw(1), &record[1..], "s"), Err(PersistenceError::Corrupt(_))));
            // Addresses are keyed: not the plain hash, and per store.
            assert_ne!(c.address("x"), crate::bodies::body_hash("x"));
            let (c2, _) = FieldCipher::create(&raw(1)).expect("random");
            assert_ne!(c.address("x"), c2.address("x"));
        }

        #[test]
        fn a_passphrase_unlocks_its_store_only() {
            let p = KeyMaterial::Passphrase("correct horse".into());
            let (c, record) = FieldCipher::create(&p).expect("random");
            let sealed = c.seal(b"a", b"t").expect("seals");
            let again = FieldCipher::unlock(&p, &record, "s").expect("unlocks");
            assert_eq!(again.open(b"a", &sealed, "v").expect("opens"), b"t");
            assert!(matches!(
                FieldCipher::unlock(&KeyMaterial::Passphrase("wrong".into()), &record, "s"),
                Err(PersistenceError::PermissionDenied(_))
            ));
            assert_eq!(format!("{p:?}"), "KeyMaterial::Passphrase(<redacted>)");
            assert_eq!(format!("{c:?}"), "FieldCipher(<redacted>)");
        }
    }
}
