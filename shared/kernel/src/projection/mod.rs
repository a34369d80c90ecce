//! Projections: read models kept up to date from the store's ordered feed, with a durable
//! checkpoint. Applying an event twice changes nothing: each document remembers the last
//! version of its aggregate it has applied.
//!
//! [`model`] says what a projection is and how one event folds into its document; [`step`] is
//! the one per-stream step every runner takes (the feed runner in [`runner`], the DynamoDB
//! stream handler, the stream-by-stream rebuild).

pub mod model;
pub mod runner;
pub mod step;

pub use crate::error::ProjectionError;
pub use model::{
    doc_write, fold_event, index_values, state_projection_name, Projection, Rebuilt,
    StateProjection,
};
pub use runner::{ProjectionRunner, Step};
pub use step::{Folded, Origin, Start, StreamStep};
