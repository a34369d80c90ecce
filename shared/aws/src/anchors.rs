//! Anchors on AWS: the events table's heads from one `Scan`, and the anchor log in the anchor
//! bucket, under S3 Object Lock (the bucket's default retention covers every object written): an
//! anchor is `anchors/{sequence:020}.json`, the heads it commits to `heads/{sequence:020}.lz4`
//! (`type\tid\tversion\thash` lines, LZ4), each written once (`If-None-Match: *`: a second
//! anchor of the same number is refused). Each anchor is also put on the Kinesis stream, under
//! a partition key no aggregate id can take ([`ANCHOR_PARTITION`]), so other services see it.

use crate::backend;
use crate::item::{self, PK, SK};
use crate::DynamoEventStore;
use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_s3::primitives::ByteStream;
use chronicle_kernel::anchor::{Anchor, Head};
use chronicle_kernel::{AnchorLog, StoreError, StreamHeads};
use futures::stream::{self, StreamExt, TryStreamExt};
use std::collections::BTreeMap;

/// The Kinesis partition key of anchor records: `#` is in no aggregate id, so consumers of
/// events can tell them apart (and skip them).
pub const ANCHOR_PARTITION: &str = "#anchors";

#[async_trait]
impl StreamHeads for DynamoEventStore {
    async fn heads(&self) -> Result<Vec<Head>, StoreError> {
        // Every event item's keys and hash; the head of a stream is its highest version.
        let mut heads: BTreeMap<String, Head> = BTreeMap::new();
        let mut pages = self
            .client()
            .scan()
            .table_name(self.table())
            .projection_expression("#pk, #v, #h, aggregate_type, aggregate_id")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#v", SK)
            .expression_attribute_names("#h", item::HASH)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| backend("Scan (heads)", e))?;
            for it in page.items() {
                let s = |k: &str| match it.get(k) {
                    Some(AttributeValue::S(v)) => Some(v.clone()),
                    _ => None,
                };
                let Some(stream) = s(PK).filter(|p| !p.starts_with(item::IDEMPOTENCY_PREFIX))
                else {
                    continue;
                };
                let Some(version) = it
                    .get(SK)
                    .and_then(|v| v.as_n().ok())
                    .and_then(|n| n.parse::<u64>().ok())
                else {
                    continue;
                };
                if heads.get(&stream).is_some_and(|h| h.version >= version) {
                    continue;
                }
                let (Some(aggregate_type), Some(aggregate_id)) =
                    (s("aggregate_type"), s("aggregate_id"))
                else {
                    return Err(StoreError::Corrupt(format!(
                        "{stream} v{version}: an event item without its aggregate"
                    )));
                };
                heads.insert(
                    stream,
                    Head {
                        aggregate_type,
                        aggregate_id,
                        version,
                        hash: s(item::HASH).unwrap_or_default(),
                    },
                );
            }
        }
        let mut out: Vec<Head> = heads.into_values().collect();
        out.sort_unstable();
        Ok(out)
    }
}

/// The anchor log in an S3 bucket under Object Lock, announced on Kinesis.
#[derive(Clone, Debug)]
pub struct S3AnchorLog {
    s3: aws_sdk_s3::Client,
    bucket: String,
    kinesis: Option<(aws_sdk_kinesis::Client, String)>,
}

fn anchor_key(sequence: u64) -> String {
    format!("anchors/{sequence:020}.json")
}

fn heads_key(sequence: u64) -> String {
    format!("heads/{sequence:020}.lz4")
}

impl S3AnchorLog {
    pub fn new(s3: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        Self {
            s3,
            bucket: bucket.into(),
            kinesis: None,
        }
    }

    /// Also puts each new anchor on this Kinesis stream.
    pub fn announcing_on(mut self, kinesis: aws_sdk_kinesis::Client, stream: &str) -> Self {
        self.kinesis = Some((kinesis, stream.to_owned()));
        self
    }

    async fn put_once(&self, key: &str, body: Vec<u8>) -> Result<(), StoreError> {
        let put = self
            .s3
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .if_none_match("*")
            // Object Lock wants every PUT checked on arrival (Content-MD5 or a checksum).
            .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32)
            .body(ByteStream::from(body))
            .send()
            .await;
        match put {
            Ok(_) => Ok(()),
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                if matches!(status, Some(412 | 409)) {
                    return Err(StoreError::Invalid(format!(
                        "s3://{}/{key} exists: another anchor took its number",
                        self.bucket
                    )));
                }
                Err(backend("PutObject (anchor)", e))
            }
        }
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let got = self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| backend("GetObject (anchor)", e))?;
        let bytes =
            got.body.collect().await.map_err(|e| {
                StoreError::Backend(format!("reading s3://{}/{key}: {e}", self.bucket))
            })?;
        Ok(bytes.into_bytes().to_vec())
    }
}

#[async_trait]
impl AnchorLog for S3AnchorLog {
    async fn append(&self, anchor: &Anchor, heads: &[Head]) -> Result<(), StoreError> {
        // The heads first: an anchor in the log always has its heads beside it.
        let mut text = String::with_capacity(heads.len() * 96);
        for h in heads {
            text.push_str(&format!(
                "{}\t{}\t{}\t{}\n",
                h.aggregate_type, h.aggregate_id, h.version, h.hash
            ));
        }
        self.put_once(
            &heads_key(anchor.sequence),
            lz4_flex::compress_prepend_size(text.as_bytes()),
        )
        .await?;
        let json = serde_json::to_vec(anchor).map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.put_once(&anchor_key(anchor.sequence), json.clone())
            .await?;
        if let Some((kinesis, stream)) = &self.kinesis {
            // S3 holds the anchor; the record is a copy for other services: a failure here is
            // logged, not the anchor's.
            let sent = kinesis
                .put_record()
                .stream_name(stream)
                .partition_key(ANCHOR_PARTITION)
                .data(aws_sdk_kinesis::primitives::Blob::new(json))
                .send()
                .await;
            if let Err(e) = sent {
                tracing::warn!(sequence = anchor.sequence, error = %aws_sdk_kinesis::error::DisplayErrorContext(e), "the anchor is in S3; its Kinesis record was not sent");
            }
        }
        Ok(())
    }

    async fn anchors(&self) -> Result<Vec<Anchor>, StoreError> {
        let mut keys = Vec::new();
        let mut pages = self
            .s3
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix("anchors/")
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| backend("ListObjectsV2 (anchors)", e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
        }
        keys.sort();
        stream::iter(keys)
            .map(|key| async move {
                let bytes = self.get(&key).await?;
                serde_json::from_slice::<Anchor>(&bytes)
                    .map_err(|e| StoreError::Corrupt(format!("s3://{}/{key}: {e}", self.bucket)))
            })
            .buffered(16)
            .try_collect()
            .await
    }

    async fn heads(&self, sequence: u64) -> Result<Vec<Head>, StoreError> {
        let key = heads_key(sequence);
        let packed = self.get(&key).await?;
        let corrupt = |why: &str| StoreError::Corrupt(format!("s3://{}/{key}: {why}", self.bucket));
        let text = lz4_flex::decompress_size_prepended(&packed)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| corrupt("not the heads an anchor wrote"))?;
        text.lines()
            .map(|line| {
                let mut f = line.split('\t');
                let (Some(t), Some(id), Some(v), Some(h), None) =
                    (f.next(), f.next(), f.next(), f.next(), f.next())
                else {
                    return Err(corrupt(line));
                };
                Ok(Head {
                    aggregate_type: t.to_owned(),
                    aggregate_id: id.to_owned(),
                    version: v.parse().map_err(|_| corrupt(line))?,
                    hash: h.to_owned(),
                })
            })
            .collect()
    }
}
