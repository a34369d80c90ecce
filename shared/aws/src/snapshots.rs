//! Snapshots in S3: one immutable-by-convention object per (stream, version) and a `latest`
//! pointer object holding a copy of the newest, so the command path finds it in one GET.

use crate::backend;
use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use chronicle_kernel::{Snapshot, SnapshotStore, StoreError, StreamId};

#[derive(Clone, Debug)]
pub struct S3SnapshotStore {
    client: Client,
    bucket: String,
}

/// Versions are zero-padded so S3's key order is version order.
fn prefix(stream: &StreamId) -> String {
    format!(
        "snapshots/{}/{}/",
        stream.aggregate_type, stream.aggregate_id
    )
}

fn version_key(stream: &StreamId, version: u64) -> String {
    format!("{}v{version:020}.json", prefix(stream))
}

fn latest_key(stream: &StreamId) -> String {
    format!("{}latest.json", prefix(stream))
}

impl S3SnapshotStore {
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        Self {
            client,
            bucket: bucket.into(),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Snapshot>, StoreError> {
        let got = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        let out = match got {
            Ok(o) => o,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(backend("GetObject", e)),
        };
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| StoreError::Backend(format!("reading s3://{}/{key}: {e}", self.bucket)))?
            .into_bytes();
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("s3://{}/{key}: {e}", self.bucket)))
    }

    async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| backend("PutObject", e))?;
        Ok(())
    }

    /// The newest snapshot key at or below `max_version`, by listing the stream's prefix.
    async fn newest_at_or_below(
        &self,
        stream: &StreamId,
        max_version: u64,
    ) -> Result<Option<String>, StoreError> {
        let prefix = prefix(stream);
        let mut best: Option<(u64, String)> = None;
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| backend("ListObjectsV2", e))?;
            for obj in page.contents() {
                let Some(k) = obj.key() else { continue };
                let Some(v) = k
                    .strip_prefix(&prefix)
                    .and_then(|rest| rest.strip_prefix('v'))
                    .and_then(|rest| rest.strip_suffix(".json"))
                    .and_then(|digits| digits.parse::<u64>().ok())
                else {
                    continue;
                };
                if v <= max_version && best.as_ref().is_none_or(|(b, _)| v > *b) {
                    best = Some((v, k.to_owned()));
                }
            }
        }
        Ok(best.map(|(_, k)| k))
    }
}

#[async_trait]
impl SnapshotStore for S3SnapshotStore {
    async fn latest(
        &self,
        stream: &StreamId,
        max_version: Option<u64>,
    ) -> Result<Option<Snapshot>, StoreError> {
        let latest = self.get(&latest_key(stream)).await?;
        match (latest, max_version) {
            (latest, None) => Ok(latest),
            (Some(s), Some(max)) if s.version <= max => Ok(Some(s)),
            // Time travel below the newest snapshot: the rare path, one LIST and one GET.
            (_, Some(max)) => match self.newest_at_or_below(stream, max).await? {
                Some(key) => self.get(&key).await,
                None => Ok(None),
            },
        }
    }

    async fn save(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        let body = serde_json::to_vec(&snapshot).map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.put(
            &version_key(&snapshot.stream, snapshot.version),
            body.clone(),
        )
        .await?;
        // Move the pointer only forward. Two snapshotters racing can still leave it on the
        // older of two snapshots: that costs replay time, never correctness.
        let current = self.get(&latest_key(&snapshot.stream)).await?;
        if current.is_none_or(|c| c.version <= snapshot.version) {
            self.put(&latest_key(&snapshot.stream), body).await?;
        }
        Ok(())
    }
}
