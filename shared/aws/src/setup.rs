//! Creating (and removing) the AWS resources Chronicle needs, for development against a local
//! endpoint and for tests. Production resources come from the SAM template instead.

use crate::{backend, Clients, Settings};
use crate::{item, keys, read_models};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, CreateGlobalSecondaryIndexAction, GlobalSecondaryIndex,
    GlobalSecondaryIndexUpdate, IndexStatus, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType, StreamSpecification, StreamViewType, TableStatus, TimeToLiveSpecification,
    TimeToLiveStatus,
};
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use chronicle_kernel::StoreError;
use std::time::Duration;

/// What `ensure` found or made, one line per resource.
pub type Report = Vec<String>;

fn attr(name: &str, t: ScalarAttributeType) -> Result<AttributeDefinition, StoreError> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(t)
        .build()
        .map_err(|e| StoreError::Invalid(e.to_string()))
}

fn key(name: &str, t: KeyType) -> Result<KeySchemaElement, StoreError> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(t)
        .build()
        .map_err(|e| StoreError::Invalid(e.to_string()))
}

/// Creates every missing resource named in `settings` and waits until they are usable.
pub async fn ensure(clients: &Clients, settings: &Settings) -> Result<Report, StoreError> {
    let mut report = Vec::new();
    report.push(ensure_events_table(clients, &settings.events_table).await?);
    report.push(ensure_read_table(clients, &settings.read_table).await?);
    report.push(ensure_key_table(clients, &settings.key_table).await?);
    for bucket in [&settings.snapshot_bucket, &settings.archive_bucket] {
        report.push(ensure_bucket(clients, bucket).await?);
    }
    report.push(ensure_anchor_bucket(clients, &settings.anchor_bucket).await?);
    report.push(ensure_kinesis_stream(clients, &settings.event_stream).await?);
    Ok(report)
}

/// The default retention `aws-setup` gives anchors (GOVERNANCE: a principal allowed to bypass
/// it can still remove them; the template lets a stack choose COMPLIANCE).
pub const ANCHOR_RETENTION_DAYS: i32 = 365;

/// The anchor bucket: created with S3 Object Lock (which turns on versioning) and a default
/// retention, so no anchor can be overwritten or deleted by the store's writers.
async fn ensure_anchor_bucket(clients: &Clients, bucket: &str) -> Result<String, StoreError> {
    use aws_sdk_s3::types::{
        DefaultRetention, ObjectLockConfiguration, ObjectLockEnabled, ObjectLockRetentionMode,
        ObjectLockRule,
    };
    if clients.s3.head_bucket().bucket(bucket).send().await.is_ok() {
        return Ok(format!("bucket {bucket}: exists"));
    }
    create_bucket(clients, bucket)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .map_err(|e| backend("CreateBucket (object lock)", e))?;
    clients
        .s3
        .put_object_lock_configuration()
        .bucket(bucket)
        .object_lock_configuration(
            ObjectLockConfiguration::builder()
                .object_lock_enabled(ObjectLockEnabled::Enabled)
                .rule(
                    ObjectLockRule::builder()
                        .default_retention(
                            DefaultRetention::builder()
                                .mode(ObjectLockRetentionMode::Governance)
                                .days(ANCHOR_RETENTION_DAYS)
                                .build(),
                        )
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .map_err(|e| backend("PutObjectLockConfiguration", e))?;
    Ok(format!(
        "bucket {bucket}: created, Object Lock GOVERNANCE {ANCHOR_RETENTION_DAYS} days"
    ))
}

async fn table_exists(clients: &Clients, table: &str) -> Result<bool, StoreError> {
    match clients
        .dynamodb
        .describe_table()
        .table_name(table)
        .send()
        .await
    {
        Ok(_) => Ok(true),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            Ok(false)
        }
        Err(e) => Err(backend("DescribeTable", e)),
    }
}

async fn wait_table_active(clients: &Clients, table: &str) -> Result<(), StoreError> {
    for _ in 0..120 {
        let out = clients
            .dynamodb
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| backend("DescribeTable", e))?;
        if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(StoreError::Backend(format!(
        "table {table} did not become ACTIVE in 60 s"
    )))
}

/// The events table's `by_time` index (the audit feed): sparse, every attribute projected so
/// a page is read from the index alone.
fn time_index() -> Result<GlobalSecondaryIndex, StoreError> {
    GlobalSecondaryIndex::builder()
        .index_name(item::TIME_INDEX)
        .key_schema(key(item::TIME_BUCKET, KeyType::Hash)?)
        .key_schema(key(item::TIME_KEY, KeyType::Range)?)
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::All)
                .build(),
        )
        .build()
        .map_err(|e| StoreError::Invalid(e.to_string()))
}

/// The index names of an existing table.
async fn table_indexes(clients: &Clients, table: &str) -> Result<Vec<String>, StoreError> {
    let out = clients
        .dynamodb
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map_err(|e| backend("DescribeTable", e))?;
    Ok(out
        .table()
        .map(|t| {
            t.global_secondary_indexes()
                .iter()
                .filter_map(|g| g.index_name().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// Adds `by_time` to an events table made before it. DynamoDB builds the index from the
/// items that have its keys: events stored before it have none, so they stay out of the feed.
async fn add_time_index(clients: &Clients, table: &str) -> Result<(), StoreError> {
    let gsi = time_index()?;
    let create = CreateGlobalSecondaryIndexAction::builder()
        .index_name(gsi.index_name())
        .set_key_schema(Some(gsi.key_schema().to_vec()))
        .set_projection(gsi.projection().cloned())
        .build()
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    clients
        .dynamodb
        .update_table()
        .table_name(table)
        .attribute_definitions(attr(item::TIME_BUCKET, ScalarAttributeType::S)?)
        .attribute_definitions(attr(item::TIME_KEY, ScalarAttributeType::S)?)
        .global_secondary_index_updates(
            GlobalSecondaryIndexUpdate::builder().create(create).build(),
        )
        .send()
        .await
        .map_err(|e| backend("UpdateTable", e))?;
    wait_index_active(clients, table, item::TIME_INDEX).await
}

async fn wait_index_active(clients: &Clients, table: &str, index: &str) -> Result<(), StoreError> {
    for _ in 0..600 {
        let out = clients
            .dynamodb
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| backend("DescribeTable", e))?;
        let active = out.table().is_some_and(|t| {
            t.global_secondary_indexes().iter().any(|g| {
                g.index_name() == Some(index) && g.index_status() == Some(&IndexStatus::Active)
            })
        });
        if active {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(StoreError::Backend(format!(
        "index {index} of {table} did not become ACTIVE in 5 minutes"
    )))
}

/// Turns on the table's TTL on [`item::EXPIRES_AT`] (as the SAM template does), so hot copies
/// of archived events marked to expire are deleted. An endpoint that doesn't support TTL is
/// noted, not fatal: expiry is a cost saving, and nothing is ever marked without an archive.
async fn ensure_ttl(clients: &Clients, table: &str) -> String {
    let current = clients
        .dynamodb
        .describe_time_to_live()
        .table_name(table)
        .send()
        .await;
    if let Ok(out) = &current {
        let d = out.time_to_live_description();
        if d.and_then(|d| d.attribute_name()) == Some(item::EXPIRES_AT)
            && matches!(
                d.and_then(|d| d.time_to_live_status()),
                Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
            )
        {
            return format!("TTL on {}", item::EXPIRES_AT);
        }
    }
    let spec = TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name(item::EXPIRES_AT)
        .build();
    let spec = match spec {
        Ok(s) => s,
        Err(e) => return format!("TTL not enabled: {e}"),
    };
    match clients
        .dynamodb
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(spec)
        .send()
        .await
    {
        Ok(_) => format!("TTL on {} enabled", item::EXPIRES_AT),
        Err(e) => {
            let e = backend("UpdateTimeToLive", e);
            tracing::warn!(table, error = %e, "the endpoint did not enable TTL; archived hot copies will not expire");
            format!("TTL not enabled ({e})")
        }
    }
}

async fn ensure_events_table(clients: &Clients, table: &str) -> Result<String, StoreError> {
    if table_exists(clients, table).await? {
        let ttl = ensure_ttl(clients, table).await;
        if table_indexes(clients, table)
            .await?
            .iter()
            .any(|i| i == item::TIME_INDEX)
        {
            return Ok(format!("events table {table}: exists; {ttl}"));
        }
        add_time_index(clients, table).await?;
        return Ok(format!(
            "events table {table}: exists; {ttl}; index {} added (events stored before it are not in it)",
            item::TIME_INDEX
        ));
    }
    clients
        .dynamodb
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr(item::PK, ScalarAttributeType::S)?)
        .attribute_definitions(attr(item::SK, ScalarAttributeType::N)?)
        .attribute_definitions(attr(item::TIME_BUCKET, ScalarAttributeType::S)?)
        .attribute_definitions(attr(item::TIME_KEY, ScalarAttributeType::S)?)
        .key_schema(key(item::PK, KeyType::Hash)?)
        .key_schema(key(item::SK, KeyType::Range)?)
        .global_secondary_indexes(time_index()?)
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewImage)
                .build()
                .map_err(|e| StoreError::Invalid(e.to_string()))?,
        )
        .send()
        .await
        .map_err(|e| backend("CreateTable", e))?;
    wait_table_active(clients, table).await?;
    wait_index_active(clients, table, item::TIME_INDEX).await?;
    let ttl = ensure_ttl(clients, table).await;
    Ok(format!(
        "events table {table}: created (stream NEW_IMAGE, index {}; {ttl})",
        item::TIME_INDEX
    ))
}

async fn ensure_read_table(clients: &Clients, table: &str) -> Result<String, StoreError> {
    if table_exists(clients, table).await? {
        return Ok(format!("read-model table {table}: exists"));
    }
    let mut create = clients
        .dynamodb
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr(read_models::PK, ScalarAttributeType::S)?)
        .attribute_definitions(attr("key", ScalarAttributeType::S)?)
        .key_schema(key(read_models::PK, KeyType::Hash)?);
    for (index, ix) in read_models::INDEXES {
        create = create
            .attribute_definitions(attr(ix, ScalarAttributeType::S)?)
            .global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name(index)
                    .key_schema(key(ix, KeyType::Hash)?)
                    .key_schema(key("key", KeyType::Range)?)
                    .projection(
                        Projection::builder()
                            .projection_type(ProjectionType::All)
                            .build(),
                    )
                    .build()
                    .map_err(|e| StoreError::Invalid(e.to_string()))?,
            );
    }
    create.send().await.map_err(|e| backend("CreateTable", e))?;
    wait_table_active(clients, table).await?;
    Ok(format!("read-model table {table}: created"))
}

/// The data subjects' keys: no stream (nothing consumes changes to keys), and deliberately no
/// point-in-time recovery, which would keep a restorable copy of every forgotten key for up to
/// 35 days; on-demand backups of this table would do the same.
async fn ensure_key_table(clients: &Clients, table: &str) -> Result<String, StoreError> {
    if table_exists(clients, table).await? {
        return Ok(format!("key table {table}: exists"));
    }
    clients
        .dynamodb
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr(keys::SUBJECT, ScalarAttributeType::S)?)
        .key_schema(key(keys::SUBJECT, KeyType::Hash)?)
        .send()
        .await
        .map_err(|e| backend("CreateTable", e))?;
    wait_table_active(clients, table).await?;
    Ok(format!(
        "key table {table}: created (no stream, no point-in-time recovery)"
    ))
}

/// A CreateBucket request in the clients' region.
fn create_bucket(
    clients: &Clients,
    bucket: &str,
) -> aws_sdk_s3::operation::create_bucket::builders::CreateBucketFluentBuilder {
    let create = clients.s3.create_bucket().bucket(bucket);
    // us-east-1 is the one region that refuses an explicit location constraint.
    match clients.sdk.region().map(|r| r.as_ref().to_owned()) {
        Some(region) if region != "us-east-1" => create.create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(region.as_str()))
                .build(),
        ),
        _ => create,
    }
}

async fn ensure_bucket(clients: &Clients, bucket: &str) -> Result<String, StoreError> {
    if clients.s3.head_bucket().bucket(bucket).send().await.is_ok() {
        return Ok(format!("bucket {bucket}: exists"));
    }
    create_bucket(clients, bucket)
        .send()
        .await
        .map_err(|e| backend("CreateBucket", e))?;
    Ok(format!("bucket {bucket}: created"))
}

async fn ensure_kinesis_stream(clients: &Clients, stream: &str) -> Result<String, StoreError> {
    let described = clients
        .kinesis
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await;
    let created = match described {
        Ok(_) => false,
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            clients
                .kinesis
                .create_stream()
                .stream_name(stream)
                .shard_count(1)
                .send()
                .await
                .map_err(|e| backend("CreateStream", e))?;
            true
        }
        Err(e) => return Err(backend("DescribeStreamSummary", e)),
    };
    for _ in 0..120 {
        let out = clients
            .kinesis
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .map_err(|e| backend("DescribeStreamSummary", e))?;
        if out
            .stream_description_summary()
            .is_some_and(|s| s.stream_status().as_str() == "ACTIVE")
        {
            return Ok(format!(
                "Kinesis stream {stream}: {}",
                if created { "created" } else { "exists" }
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(StoreError::Backend(format!(
        "stream {stream} did not become ACTIVE in 60 s"
    )))
}

/// Removes everything `ensure` creates (tests clean up after themselves this way).
pub async fn remove(clients: &Clients, settings: &Settings) -> Result<(), StoreError> {
    for table in [
        &settings.events_table,
        &settings.read_table,
        &settings.key_table,
    ] {
        let r = clients
            .dynamodb
            .delete_table()
            .table_name(table)
            .send()
            .await;
        if let Err(e) = r {
            if !e
                .as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception())
            {
                return Err(backend("DeleteTable", e));
            }
        }
    }
    for bucket in [&settings.snapshot_bucket, &settings.archive_bucket] {
        empty_and_delete_bucket(clients, bucket).await?;
    }
    empty_and_delete_locked_bucket(clients, &settings.anchor_bucket).await?;
    let r = clients
        .kinesis
        .delete_stream()
        .stream_name(&settings.event_stream)
        .enforce_consumer_deletion(true)
        .send()
        .await;
    if let Err(e) = r {
        if !e
            .as_service_error()
            .is_some_and(|s| s.is_resource_not_found_exception())
        {
            return Err(backend("DeleteStream", e));
        }
    }
    Ok(())
}

/// A bucket under Object Lock (GOVERNANCE): every version deleted, bypassing the retention
/// (what `remove` is for: the test resources), then the bucket.
async fn empty_and_delete_locked_bucket(clients: &Clients, bucket: &str) -> Result<(), StoreError> {
    if clients
        .s3
        .head_bucket()
        .bucket(bucket)
        .send()
        .await
        .is_err()
    {
        return Ok(());
    }
    loop {
        let page = clients
            .s3
            .list_object_versions()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| backend("ListObjectVersions", e))?;
        let versions: Vec<(String, Option<String>)> = page
            .versions()
            .iter()
            .filter_map(|v| Some((v.key()?.to_owned(), v.version_id().map(str::to_owned))))
            .chain(
                page.delete_markers()
                    .iter()
                    .filter_map(|m| Some((m.key()?.to_owned(), m.version_id().map(str::to_owned)))),
            )
            .collect();
        if versions.is_empty() {
            break;
        }
        for (key, version) in versions {
            clients
                .s3
                .delete_object()
                .bucket(bucket)
                .key(key)
                .set_version_id(version)
                .bypass_governance_retention(true)
                .send()
                .await
                .map_err(|e| backend("DeleteObject (locked)", e))?;
        }
    }
    clients
        .s3
        .delete_bucket()
        .bucket(bucket)
        .send()
        .await
        .map_err(|e| backend("DeleteBucket", e))?;
    Ok(())
}

async fn empty_and_delete_bucket(clients: &Clients, bucket: &str) -> Result<(), StoreError> {
    if clients
        .s3
        .head_bucket()
        .bucket(bucket)
        .send()
        .await
        .is_err()
    {
        return Ok(());
    }
    let mut pages = clients
        .s3
        .list_objects_v2()
        .bucket(bucket)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| backend("ListObjectsV2", e))?;
        for obj in page.contents() {
            if let Some(k) = obj.key() {
                clients
                    .s3
                    .delete_object()
                    .bucket(bucket)
                    .key(k)
                    .send()
                    .await
                    .map_err(|e| backend("DeleteObject", e))?;
            }
        }
    }
    clients
        .s3
        .delete_bucket()
        .bucket(bucket)
        .send()
        .await
        .map_err(|e| backend("DeleteBucket", e))?;
    Ok(())
}
