//! Tamper evidence: every event stores a SHA-256 over its canonical envelope and the previous
//! event's hash in the same stream, so changing, removing or reordering a stored event breaks
//! the chain from that version on.
//!
//! The canonical form is built from the fields as both stores keep them (text), so a verifier
//! can hash stored rows without decoding JSON: each field is length-prefixed (u32 LE), which
//! keeps field boundaries unambiguous whatever the fields contain.
//!
//! [`hash`] makes the chain (the canonical form, sealing), [`check`] follows one stream's chain
//! and names where it breaks, [`verify`] runs the check over a store through its port. The
//! first two know no port, so the ports can carry their types.

pub mod check;
pub mod hash;
pub mod verify;

pub use check::{ChainBreak, ChainCheck, VerifyReport};
pub use hash::{
    hash_envelope, hash_fields, seal, seal_stored, stored_json, CanonicalFields, StoredText,
    GENESIS,
};
pub use verify::{verify_all, verify_stream, verify_stream_against};
