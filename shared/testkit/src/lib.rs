//! Port contract suites: every adapter of a port must pass the same tests.
//!
//! Each suite is one public async function taking the adapter behind an [`Arc`]; it panics with
//! a message naming the violated rule. The suites only ever touch streams, idempotency keys,
//! projections and data subjects they create under fresh uuid-suffixed names, so they may run
//! against a shared, non-empty store (a real DynamoDB table), concurrently with each other and
//! with other writers.
//! Where another writer could make an exact check impossible (the feed's head, the wait timeout),
//! the check is written to hold on a busy store and to be exact on a quiet one.
//!
//! - [`event_store_contract`] checks [`EventStore`];
//! - [`event_feed_contract`] checks [`EventFeed`] (appending through [`EventStore`]);
//! - [`snapshot_store_contract`] checks [`SnapshotStore`];
//! - [`read_model_store_contract`] checks [`ReadModelStore`];
//! - [`command_idempotency_contract`] checks the kernel's command handler on an event store:
//!   idempotent repeats inside the retention, a free key after it;
//! - [`publisher_contract`] checks [`Publisher`] against what its consumer side reads back;
//! - [`archive_contract`] checks [`Archive`];
//! - [`archived_reads_contract`] checks reads through an [`ArchivedEventStore`] while the hot
//!   store loses the events the archiver copied;
//! - [`key_store_contract`] checks [`KeyStore`] (data subjects' keys, forgetting);
//! - [`given`] and [`given_reaction`] (`given.rs`) are no suite: they run a domain's own
//!   given/when/then tests of its aggregates and reactions.
//!
//! The checks each suite runs are public too, so an adapter's tests can run one alone.
//!
//! One file per port, named like the adapters' files in `shared/aws/src`: `events.rs`
//! ([`EventStore`]), `snapshots.rs`, `read_models.rs`, `publisher.rs`, `archive.rs`; then
//! `feed.rs` ([`EventFeed`], which only the embedded store implements), `archived.rs`
//! (archived reads), `commands.rs` (the command handler) and `fixtures.rs` (the test data and
//! assertion helpers the suites share). Everything public is re-exported here: callers name it
//! `chronicle_testkit::item` whichever file it lives in.
//!
//! [`Arc`]: std::sync::Arc
//! [`EventStore`]: chronicle_kernel::EventStore
//! [`EventFeed`]: chronicle_kernel::EventFeed
//! [`SnapshotStore`]: chronicle_kernel::SnapshotStore
//! [`ReadModelStore`]: chronicle_kernel::ReadModelStore
//! [`Publisher`]: chronicle_kernel::Publisher
//! [`Archive`]: chronicle_kernel::archive::Archive
//! [`ArchivedEventStore`]: chronicle_kernel::archived::ArchivedEventStore
//! [`KeyStore`]: chronicle_kernel::KeyStore

mod archive;
mod archived;
mod commands;
mod events;
mod feed;
mod fixtures;
mod given;
mod keys;
mod publisher;
mod read_models;
mod snapshots;

pub use archive::archive_contract;
pub use archived::{archived_reads_contract, sealed_events};
pub use commands::{command_idempotency_contract, Tally};
pub use events::{
    es_append_and_read_back, es_chains_verify_after_a_round_trip,
    es_concurrent_appends_distinct_streams, es_concurrent_appends_same_stream,
    es_conflict_stores_nothing, es_idempotency, es_idempotency_expiry,
    es_large_append_is_atomic_and_gapless, es_list_streams, es_malformed_append_stores_nothing,
    es_read_ranges, es_read_recorded, es_streams_are_keyed_by_type_and_id, event_store_contract,
    read_recorded_all, unique_window_start,
};
pub use feed::{
    event_feed_contract, feed_head_is_last_position, feed_order_paging_and_coverage,
    feed_replay_raw, feed_wait_times_out, feed_wait_wakes_on_append,
};
pub use fixtures::{
    event, events, expired_idempotency_record, idempotency_record, new_stream, request, rich_event,
    unique,
};
pub use given::{
    envelope, envelope_of, given, given_reaction, Given, GivenReaction, NotAccepted, Then,
    ThenReaction,
};
pub use keys::{
    key_store_contract, ks_concurrent_writers_get_one_key, ks_first_key_wins,
    ks_forget_destroys_for_good, ks_forget_races_writers, ks_forget_unknown_keeps_a_tombstone,
    ks_keys_in_batches, ks_subjects_are_opaque, KEY_BATCH,
};
pub use publisher::publisher_contract;
pub use read_models::{
    doc_write, read_model_store_contract, rm_apply_and_get, rm_checkpoints, rm_find_by_index,
    rm_generations, rm_missing, rm_versions_only_move_forward,
};
pub use snapshots::{snapshot, snapshot_store_contract};
