//! Creating (and removing) the AWS resources Chronicle needs, for development against a local
//! endpoint and for tests. Production resources come from the SAM template instead.

use crate::read_models;
use crate::{backend, Clients, Settings};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, StreamSpecification, StreamViewType, TableStatus,
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
    for bucket in [&settings.snapshot_bucket, &settings.archive_bucket] {
        report.push(ensure_bucket(clients, bucket).await?);
    }
    report.push(ensure_kinesis_stream(clients, &settings.event_stream).await?);
    Ok(report)
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

async fn ensure_events_table(clients: &Clients, table: &str) -> Result<String, StoreError> {
    if table_exists(clients, table).await? {
        return Ok(format!("events table {table}: exists"));
    }
    clients
        .dynamodb
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr(crate::item::PK, ScalarAttributeType::S)?)
        .attribute_definitions(attr(crate::item::SK, ScalarAttributeType::N)?)
        .key_schema(key(crate::item::PK, KeyType::Hash)?)
        .key_schema(key(crate::item::SK, KeyType::Range)?)
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
    Ok(format!("events table {table}: created (stream NEW_IMAGE)"))
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

async fn ensure_bucket(clients: &Clients, bucket: &str) -> Result<String, StoreError> {
    if clients.s3.head_bucket().bucket(bucket).send().await.is_ok() {
        return Ok(format!("bucket {bucket}: exists"));
    }
    let mut create = clients.s3.create_bucket().bucket(bucket);
    // us-east-1 is the one region that refuses an explicit location constraint.
    if let Some(region) = clients.sdk.region().map(|r| r.as_ref().to_owned()) {
        if region != "us-east-1" {
            create = create.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region.as_str()))
                    .build(),
            );
        }
    }
    create
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
    for table in [&settings.events_table, &settings.read_table] {
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
