//! The embedded default: every port on one SQLite database in a data directory.
//!
//! Durability: WAL with `synchronous=FULL`, so a command is acknowledged only after its
//! transaction is on disk; a command's events are inserted in one transaction, so they are all
//! stored or none are. The events table is append-only: triggers refuse UPDATE and DELETE, and
//! no code path issues either.

mod archive;
mod events;
mod feed;
mod heads;
mod idempotency;
mod lock;
mod publisher;
mod read_models;
mod schema;
mod snapshots;
mod store;
mod verify;
mod writer;

pub use archive::DirArchive;
pub use idempotency::{PRUNE_BATCH, PRUNE_EVERY};
pub use lock::{locked_by, Holder, LOCK_FILE};
pub use publisher::JsonlPublisher;
pub use store::{EmbeddedStore, DB_FILE};
