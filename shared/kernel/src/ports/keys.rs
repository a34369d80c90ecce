//! Data subjects' keys: personal fields are encrypted with their subject's key before anything
//! is stored, and forgetting a subject destroys the key (crypto-shredding). The key store is
//! kept apart from the event store (a separate SQLite file, a separate DynamoDB table) so the
//! keys can be destroyed while the events stay immutable.

use crate::error::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use zeroize::Zeroizing;

/// A subject's 256-bit data key; zeroed when dropped.
#[derive(Clone)]
pub struct DataKey(pub Zeroizing<[u8; 32]>);

impl DataKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        use chacha20poly1305::aead::{KeyInit, OsRng};
        let key = chacha20poly1305::XChaCha20Poly1305::generate_key(&mut OsRng);
        Self(Zeroizing::new(key.into()))
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes: [u8; 32] = bytes.try_into().ok()?;
        Some(Self(Zeroizing::new(bytes)))
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// Where a subject's key stands.
#[derive(Clone, Debug)]
pub enum SubjectKey {
    Live(DataKey),
    /// The key was destroyed: what it encrypted can never be read again, and nothing new is
    /// written for the subject.
    Forgotten {
        at: DateTime<Utc>,
    },
}

/// What [`KeyStore::forget`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forgetting {
    /// The subject had a live key and this call destroyed it (false: already forgotten, or
    /// the subject never had one; a tombstone is kept either way).
    pub destroyed: bool,
    /// When the subject was forgotten (the first time).
    pub at: DateTime<Utc>,
}

/// The data subjects' keys.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// The subject's key for writing: the stored one, or `fresh`, stored now if the subject
    /// has none (two writers racing both get the one stored first); `Forgotten` once the
    /// subject was forgotten.
    async fn key_for_writing(
        &self,
        subject: &str,
        fresh: DataKey,
    ) -> Result<SubjectKey, StoreError>;
    /// The keys of `subjects` as they stand; a subject that never had a key is absent.
    async fn keys(&self, subjects: &[&str]) -> Result<HashMap<String, SubjectKey>, StoreError>;
    /// Destroys the subject's key for good (no copy of it stays in the store) and keeps a
    /// tombstone, so the subject can never get a key again. Repeating it changes nothing.
    async fn forget(&self, subject: &str, at: DateTime<Utc>) -> Result<Forgetting, StoreError>;
}
