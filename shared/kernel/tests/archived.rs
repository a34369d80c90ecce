//! The archived event store over the in-memory store of `common`, with an empty archive.

mod common;

use async_trait::async_trait;
use chronicle_kernel::archive::{Archive, ByteRange};
use chronicle_kernel::archived::ArchivedEventStore;
use chronicle_kernel::{StoreError, StoredHashes, StreamId};
use common::{events, Memory};
use std::sync::Arc;

struct NoArchive;

#[async_trait]
impl Archive for NoArchive {
    async fn put_segment(&self, _name: &str, _bytes: Vec<u8>) -> Result<bool, StoreError> {
        Err(StoreError::Invalid("read-only".into()))
    }
    async fn list_segments(&self, _prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }
    async fn read_segment(&self, name: &str, _range: ByteRange) -> Result<Vec<u8>, StoreError> {
        Err(StoreError::Corrupt(format!("no segment {name}")))
    }
}

#[tokio::test]
async fn hashes_are_the_hot_stores_even_where_it_lost_an_event() {
    let hot = Arc::new(Memory::default());
    let mut c1 = events("c1", 3);
    chronicle_kernel::chain::seal(chronicle_kernel::chain::GENESIS, &mut c1);
    let want: Vec<Option<String>> = vec![None, Some(c1[1].hash.clone()), Some(c1[2].hash.clone())];
    // v1 is gone from the hot store (expired) and the archive does not have it.
    c1.remove(0);
    hot.add(c1, &[]);
    let store = ArchivedEventStore::new(hot.clone(), Arc::new(NoArchive));
    let stream = StreamId::new("counters", "c1");
    let at: Vec<(StreamId, u64)> = (1..=3).map(|v| (stream.clone(), v)).collect();
    // The hot store's answer, as the archive check holds it: not a read through the merged
    // history, which finds v1 nowhere.
    assert_eq!(store.hashes_at(&at).await.expect("hashes"), want);
    assert_eq!(hot.hashes_at(&at).await.expect("hashes"), want);
}
