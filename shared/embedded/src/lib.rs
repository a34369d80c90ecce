//! The embedded default: every port on one SQLite database in a data directory.
//!
//! Durability: WAL, and a command is acknowledged only after its transaction is on disk (the
//! writer's syncer thread fsyncs the WAL before answering: `synchronous=FULL`'s guarantee); a
//! command's events are inserted in one transaction, so they are all stored or none are. The
//! events table is append-only: triggers refuse UPDATE and DELETE, and no code path issues
//! either.
//!
//! Files are named as in shared/aws where the job is the same: `events.rs` (`EventStore`),
//! `snapshots.rs`, `read_models.rs`, `archive.rs` and `publisher.rs`; the `EventFeed` is in
//! `feed.rs` (shared/aws keeps it in `events.rs`). The rest is SQLite's own: `store.rs` opens a
//! data directory and owns the readers, `schema.rs` holds the tables and the upgrades of older
//! directories (what `setup.rs` creates on AWS), `writer.rs` is the one writer thread,
//! `heads.rs` the stream tables, `idempotency.rs` the records and their pruning, `lock.rs` one
//! writing process per directory, `verify.rs` the whole-store chain check and `anchors.rs` the
//! heads listing and the anchor log's files. `keys.rs` is the data subjects' keys, in a SQLite
//! file of their own (`keys.sqlite`).

mod anchors;
mod archive;
mod events;
mod feed;
mod heads;
mod idempotency;
mod keys;
mod lock;
mod publisher;
mod read_models;
mod schema;
mod snapshots;
mod store;
mod verify;
mod writer;

pub use anchors::{DirAnchorLog, ANCHOR_LOG};
pub use archive::DirArchive;
pub use idempotency::{PRUNE_BATCH, PRUNE_EVERY};
pub use keys::{SqliteKeyStore, KEYS_FILE};
pub use lock::{locked_by, Holder, LOCK_FILE};
pub use publisher::JsonlPublisher;
pub use store::{EmbeddedStore, DB_FILE};
