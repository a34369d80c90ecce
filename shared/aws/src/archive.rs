//! The archive on S3: one object per segment, `{prefix}{aggregate_type}/{name}.seg`, written
//! once with a conditional PUT and never overwritten, read back in byte ranges.

use crate::backend;
use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumAlgorithm;
use aws_sdk_s3::Client;
use chronicle_kernel::archive::{Archive, ByteRange, SEGMENT_SUFFIX};
use chronicle_kernel::StoreError;

#[derive(Clone, Debug)]
pub struct S3Archive {
    client: Client,
    bucket: String,
    /// Empty, or ends with `/`.
    prefix: String,
}

impl S3Archive {
    /// Segments at the bucket's root.
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        Self::with_prefix(client, bucket, "")
    }

    /// Segments under `prefix` (a `/` is added if it lacks one), so one bucket can hold
    /// several archives, or an archive beside other data.
    pub fn with_prefix(client: Client, bucket: impl Into<String>, prefix: &str) -> Self {
        let mut prefix = prefix.trim_start_matches('/').to_owned();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Self {
            client,
            bucket: bucket.into(),
            prefix,
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The object's size, `None` if it is missing.
    async fn size(&self, name: &str) -> Result<Option<u64>, StoreError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.key(name))
            .send()
            .await
        {
            Ok(o) => Ok(Some(o.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(backend("HeadObject", e)),
        }
    }

    fn missing(name: &str) -> StoreError {
        StoreError::Corrupt(format!("archive segment {name} is missing"))
    }

    fn past_end(name: &str, range: ByteRange, size: Option<u64>) -> StoreError {
        let size = size.map_or_else(|| "unknown".to_owned(), |s| format!("{s} bytes"));
        StoreError::Corrupt(format!(
            "archive segment {name}: {range:?} lies past its end ({size})"
        ))
    }
}

/// The HTTP status S3 answered with, if it answered.
fn status<E>(e: &SdkError<E, HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// The total size from a `Content-Range: bytes a-b/total` header.
fn total_of(content_range: Option<&str>) -> Option<u64> {
    content_range?.rsplit_once('/')?.1.trim().parse().ok()
}

#[async_trait]
impl Archive for S3Archive {
    async fn put_segment(&self, name: &str, bytes: Vec<u8>) -> Result<bool, StoreError> {
        let key = self.key(name);
        // `If-None-Match: *` makes S3 refuse the PUT when the key exists (412), atomically:
        // of two racing writers exactly one stores. The pinned moto (5.2.5) honours it too
        // (412 PreconditionFailed), so no HeadObject pre-check is needed: it could only race. A checksum is required on every PUT to a
        // bucket under Object Lock, and S3 checks it against the body it received.
        let put = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .if_none_match("*")
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .content_type("application/octet-stream")
            .body(ByteStream::from(bytes))
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(e) => {
                let code = e.code().map(str::to_owned);
                let status = status(&e);
                // 412: the key exists. 409 ConditionalRequestConflict: another conditional
                // write of the key is in flight; it or an earlier one holds the name. Either
                // way the name is taken. (If an SDK retry follows a PUT that did store but whose
                // answer was lost, it reads as taken too: the archiver then stops without
                // expiring anything, and the next run finds the segment in its catalog.)
                if status == Some(412)
                    || status == Some(409)
                    || matches!(
                        code.as_deref(),
                        Some("PreconditionFailed" | "ConditionalRequestConflict")
                    )
                {
                    return Ok(false);
                }
                Err(backend(&format!("PutObject s3://{}/{key}", self.bucket), e))
            }
        }
    }

    async fn list_segments(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(self.key(prefix))
            .into_paginator()
            .send();
        let mut names = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| backend("ListObjectsV2", e))?;
            names.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key())
                    .filter(|k| k.ends_with(SEGMENT_SUFFIX))
                    .filter_map(|k| k.strip_prefix(&self.prefix))
                    .map(str::to_owned),
            );
        }
        // S3 lists in UTF-8 byte order already; sorting keeps the contract on any endpoint.
        names.sort();
        Ok(names)
    }

    async fn read_segment(&self, name: &str, range: ByteRange) -> Result<Vec<u8>, StoreError> {
        let (header, want) = match range {
            ByteRange::All => (None, None),
            // A Range header can't ask for zero bytes: check the bounds with a HEAD instead.
            ByteRange::Span { offset, len: 0 } => {
                let size = self.size(name).await?.ok_or_else(|| Self::missing(name))?;
                if offset > size {
                    return Err(Self::past_end(name, range, Some(size)));
                }
                return Ok(Vec::new());
            }
            ByteRange::Suffix(0) => {
                self.size(name).await?.ok_or_else(|| Self::missing(name))?;
                return Ok(Vec::new());
            }
            ByteRange::Span { offset, len } => {
                let last = offset
                    .checked_add(len - 1)
                    .ok_or_else(|| Self::past_end(name, range, None))?;
                (Some(format!("bytes={offset}-{last}")), Some(len))
            }
            // A suffix longer than the object reads it whole, as on a directory archive.
            ByteRange::Suffix(n) => (Some(format!("bytes=-{n}")), None),
        };
        let key = self.key(name);
        let got = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .set_range(header)
            .send()
            .await;
        let out = match got {
            Ok(o) => o,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                return Err(Self::missing(name))
            }
            // 416: the range starts at or past the end.
            Err(e) if status(&e) == Some(416) || e.code() == Some("InvalidRange") => {
                return Err(Self::past_end(name, range, None))
            }
            Err(e) => return Err(backend(&format!("GetObject s3://{}/{key}", self.bucket), e)),
        };
        let total = total_of(out.content_range());
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| StoreError::Backend(format!("reading s3://{}/{key}: {e}", self.bucket)))?
            .into_bytes()
            .to_vec();
        // S3 (and moto) clamps a range that runs past the end instead of refusing it (206 with
        // fewer bytes): a short read here is a range past the end.
        if let Some(len) = want {
            if bytes.len() as u64 != len {
                return Err(Self::past_end(name, range, total));
            }
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_totals() {
        assert_eq!(total_of(Some("bytes 0-9/5000")), Some(5000));
        assert_eq!(total_of(Some("bytes */5000")), Some(5000));
        assert_eq!(total_of(Some("bytes 0-9/*")), None);
        assert_eq!(total_of(None), None);
    }

    #[test]
    fn prefixes_end_with_a_slash() {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .build();
        let c = Client::from_conf(conf);
        assert_eq!(S3Archive::new(c.clone(), "b").key("a/x.seg"), "a/x.seg");
        assert_eq!(
            S3Archive::with_prefix(c.clone(), "b", "archive").key("a/x.seg"),
            "archive/a/x.seg"
        );
        assert_eq!(
            S3Archive::with_prefix(c, "b", "/archive/").key("a/x.seg"),
            "archive/a/x.seg"
        );
    }
}
