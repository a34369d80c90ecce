//! What only the DynamoDB event store promises beyond the contract: reads past DynamoDB's
//! 1 MB page, the audit feed's time index (its layout, its bounded pages, and being added
//! to a table made before it), and expiring archived hot copies through the table's TTL; and
//! that a failed test's resources do not outlive it.

use aws_sdk_dynamodb::types::{AttributeValue, TimeToLiveStatus};
use chronicle_aws::item::{self, TIME_BUCKET, TIME_INDEX, TIME_KEY};
use chronicle_aws::testing::AwsTestEnv;
use chronicle_aws::{DynamoEventStore, MAX_HOURS_PER_PAGE};
use chronicle_kernel::{EventEnvelope, EventStore, Expiry, ReadRange, RecordedFeed};
use chronicle_testkit as kit;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;
use std::time::{Duration, Instant};

/// Every event of `from..=to` once the (eventually consistent) index holds `n` of them.
async fn feed(
    store: &DynamoEventStore,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    n: usize,
) -> Vec<EventEnvelope> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, got) = kit::read_recorded_all(store, from, to, 1000, "feed").await;
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_follow_pages_past_one_megabyte() {
    let Some(env) = AwsTestEnv::create("1 MB pages").await else {
        return;
    };
    let store = DynamoEventStore::new(env.clients.dynamodb.clone(), &env.settings.events_table);
    let stream = kit::new_stream();
    // 3 x 60 events of ~9 KB: about 1.6 MB in one partition.
    let pad = "x".repeat(9 * 1024);
    let mut all = Vec::new();
    for round in 0..3u64 {
        let mut evs = kit::events(&stream, round * 60, 60);
        for e in &mut evs {
            e.data = json!({ "pad": pad, "n": e.version });
        }
        store
            .append(&kit::request(&stream, round * 60, evs.clone()))
            .await
            .expect("append");
        all.extend(evs);
    }
    let read = store
        .read_stream(&stream, ReadRange::all())
        .await
        .expect("read");
    assert_eq!(read.len(), 180, "every event, across pages");
    assert_eq!(read, all);
    let limited = store
        .read_stream(&stream, ReadRange::from(7).limit(150))
        .await
        .expect("read");
    assert_eq!(
        limited.iter().map(|e| e.version).collect::<Vec<_>>(),
        (7..157).collect::<Vec<u64>>()
    );
    assert_eq!(store.stream_version(&stream).await.expect("version"), 180);
    // The audit feed pages through the one shard these events share past 1 MB too.
    let (from, to) = (all[0].recorded_at, all[179].recorded_at);
    assert_eq!(feed(&store, from, to, 180).await, all);
    env.remove().await;
}

/// Event items carry the index keys (hour bucket and shard, time key); idempotency records
/// don't, so the index is sparse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_items_carry_the_time_index_keys() {
    let Some(env) = AwsTestEnv::create("time index keys").await else {
        return;
    };
    let store = DynamoEventStore::new(env.clients.dynamodb.clone(), &env.settings.events_table);
    let stream = kit::new_stream();
    let mut req = kit::request(&stream, 0, kit::events(&stream, 0, 2));
    req.idempotency = Some(kit::idempotency_record(&kit::unique("key"), &stream));
    store.append(&req).await.expect("append");
    let items = env
        .clients
        .dynamodb
        .scan()
        .table_name(&env.settings.events_table)
        .send()
        .await
        .expect("Scan")
        .items
        .unwrap_or_default();
    assert_eq!(items.len(), 3);
    let text = |it: &std::collections::HashMap<String, AttributeValue>, k: &str| match it.get(k) {
        Some(AttributeValue::S(s)) => Some(s.clone()),
        _ => None,
    };
    for it in &items {
        let pk = text(it, item::PK).expect("a partition key");
        if pk.starts_with(item::IDEMPOTENCY_PREFIX) {
            assert_eq!((text(it, TIME_BUCKET), text(it, TIME_KEY)), (None, None));
            continue;
        }
        let version = match it.get(item::SK) {
            Some(AttributeValue::N(n)) => n.parse::<u64>().expect("a version"),
            other => panic!("version {other:?}"),
        };
        let e = &req.events[version as usize - 1];
        let hour = item::hour_label(&item::hour_of(&e.recorded_at));
        assert_eq!(
            text(it, TIME_BUCKET),
            Some(format!("{hour}#{}", item::shard_of(&pk)))
        );
        assert_eq!(text(it, TIME_KEY), Some(item::time_key(e)));
        assert!(text(it, TIME_KEY).expect("a time key").ends_with(&format!(
            "#{}#{}#{version:020}",
            stream.aggregate_type, stream.aggregate_id
        )));
    }
    let indexed = env
        .clients
        .dynamodb
        .scan()
        .table_name(&env.settings.events_table)
        .index_name(TIME_INDEX)
        .send()
        .await
        .expect("Scan by_time")
        .items
        .unwrap_or_default();
    assert_eq!(indexed.len(), 2, "only the events are in the index");
    env.remove().await;
}

/// An hour whose events are spread over every shard comes back merged in one order, page by
/// page, whatever the page size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_hour_is_merged_across_shards() {
    let Some(env) = AwsTestEnv::create("busy audit hour").await else {
        return;
    };
    let store = DynamoEventStore::new(env.clients.dynamodb.clone(), &env.settings.events_table);
    let t0 = kit::unique_window_start();
    // Three streams in each shard.
    let mut per_shard = [0; item::TIME_SHARDS as usize];
    let mut streams = Vec::new();
    while streams.len() < 3 * per_shard.len() {
        let stream = kit::new_stream();
        let shard = item::shard_of(&item::stream_key(&stream)) as usize;
        if per_shard[shard] < 3 {
            per_shard[shard] += 1;
            streams.push(stream);
        }
    }
    let mut all = Vec::new();
    for (i, stream) in (0i64..).zip(&streams) {
        // 12 events a shard: more than a first chunk, so shards are read on as they run dry.
        let mut evs = kit::events(stream, 0, 4);
        // Times interleave across streams, with ties.
        for (k, e) in (0i64..).zip(evs.iter_mut()) {
            e.recorded_at = t0 + TimeDelta::seconds(10 * k + (i * (k + 3)) % 11);
        }
        store
            .append(&kit::request(stream, 0, evs.clone()))
            .await
            .expect("append");
        all.extend(evs);
    }
    all.sort_by(chronicle_kernel::recorded_order);
    let to = t0 + TimeDelta::minutes(1);
    assert_eq!(feed(&store, t0, to, all.len()).await, all);
    for limit in [25, 1000] {
        let (sizes, got) = kit::read_recorded_all(&store, t0, to, limit, "busy hour").await;
        assert_eq!(got, all, "limit {limit}");
        assert!(
            sizes[..sizes.len() - 1].iter().all(|&n| n == limit),
            "full pages but the last: {sizes:?}"
        );
    }
    env.remove().await;
}

/// One call scans at most MAX_HOURS_PER_PAGE hours: a long range with little in it comes back
/// in pages that end early with a cursor, and the pages together hold every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_quiet_range_is_read_in_bounded_pages() {
    let Some(env) = AwsTestEnv::create("bounded audit pages").await else {
        return;
    };
    let store = DynamoEventStore::new(env.clients.dynamodb.clone(), &env.settings.events_table);
    let t0 = kit::unique_window_start();
    let hours = MAX_HOURS_PER_PAGE as i64;
    let stream = kit::new_stream();
    let mut evs = kit::events(&stream, 0, 2);
    evs[0].recorded_at = t0 + TimeDelta::minutes(5);
    evs[1].recorded_at = t0 + TimeDelta::hours(hours + 6);
    store
        .append(&kit::request(&stream, 0, evs.clone()))
        .await
        .expect("append");
    let to = t0 + TimeDelta::hours(hours + 6) + TimeDelta::minutes(1);
    feed(&store, t0, to, 2).await;
    // Page 1: the first event, then the budget runs out before the last hour.
    let (sizes, got) = kit::read_recorded_all(&store, t0, to, 10, "bounded").await;
    assert_eq!(sizes, vec![1, 1], "hours 0..{hours}, then the rest");
    assert_eq!(got, evs);
    // Nothing at all in the first MAX_HOURS_PER_PAGE hours of a range: an empty page with a
    // cursor, not a call that walks the whole range.
    let quiet_from = t0 + TimeDelta::hours(1);
    let first = store
        .read_recorded(quiet_from, to, None, 10)
        .await
        .expect("read_recorded");
    assert!(first.events.is_empty());
    let next = first.next.expect("a cursor to carry on from");
    let second = store
        .read_recorded(quiet_from, to, Some(next), 10)
        .await
        .expect("read_recorded");
    assert_eq!((second.events, second.next), (vec![evs[1].clone()], None));
    env.remove().await;
}

/// `aws-setup` on an events table made before the index adds it; events stored before have
/// no index keys and stay out of the feed, later ones are in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_adds_the_time_index_to_an_older_table() {
    let Some(env) = AwsTestEnv::names_only("time index upgrade").await else {
        return;
    };
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    let ddb = &env.clients.dynamodb;
    let table = &env.settings.events_table;
    ddb.create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(item::PK)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("attribute"),
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(item::SK)
                .attribute_type(ScalarAttributeType::N)
                .build()
                .expect("attribute"),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(item::PK)
                .key_type(KeyType::Hash)
                .build()
                .expect("key"),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(item::SK)
                .key_type(KeyType::Range)
                .build()
                .expect("key"),
        )
        .send()
        .await
        .expect("CreateTable without the index");
    let store = DynamoEventStore::new(ddb.clone(), table);
    // An event as stored before the index: its item without `tb` and `ts`.
    let old_stream = kit::new_stream();
    let old = kit::events(&old_stream, 0, 1);
    let mut old_item: std::collections::HashMap<String, AttributeValue> =
        serde_dynamo::to_item(item::EventItem::from_envelope(&old[0])).expect("an item");
    old_item.remove(TIME_BUCKET);
    old_item.remove(TIME_KEY);
    ddb.put_item()
        .table_name(table)
        .set_item(Some(old_item))
        .send()
        .await
        .expect("PutItem");

    let report = chronicle_aws::setup::ensure(&env.clients, &env.settings)
        .await
        .expect("aws-setup");
    assert!(
        report[0].contains("index by_time added"),
        "{}",
        report.join("\n")
    );
    let again = chronicle_aws::setup::ensure(&env.clients, &env.settings)
        .await
        .expect("aws-setup again");
    assert!(
        again[0].contains(": exists") && !again[0].contains("added"),
        "{}",
        again.join("\n")
    );

    let stream = kit::new_stream();
    let new = kit::events(&stream, 0, 2);
    store
        .append(&kit::request(&stream, 0, new.clone()))
        .await
        .expect("append");
    let from = old[0].recorded_at - TimeDelta::seconds(1);
    let to = new[1].recorded_at + TimeDelta::seconds(1);
    assert_eq!(feed(&store, from, to, 2).await, new);
    // The old event is still read by its stream.
    assert_eq!(
        store
            .read_stream(&old_stream, ReadRange::all())
            .await
            .expect("read"),
        old
    );
    env.remove().await;
}

/// Every item of a stream as stored: version, hash and `expires_at` (if set).
async fn stored(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    stream: &chronicle_kernel::StreamId,
) -> Vec<(u64, String, Option<i64>)> {
    let page = ddb
        .query()
        .table_name(table)
        .consistent_read(true)
        .key_condition_expression("#pk = :pk")
        .expression_attribute_names("#pk", item::PK)
        .expression_attribute_values(":pk", AttributeValue::S(item::stream_key(stream)))
        .send()
        .await
        .expect("Query");
    page.items()
        .iter()
        .map(|it| {
            let n = |name: &str| match it.get(name) {
                Some(AttributeValue::N(n)) => Some(n.parse::<i64>().expect("a number")),
                _ => None,
            };
            let hash = match it.get(item::HASH) {
                Some(AttributeValue::S(s)) => s.clone(),
                _ => String::new(),
            };
            (
                n(item::SK).expect("a version") as u64,
                hash,
                n(item::EXPIRES_AT),
            )
        })
        .collect()
}

/// The archiver marks exactly the archived hot copies to expire, never a stream's head, and
/// never an event whose stored hash is not the one it archived; `expire` itself creates
/// nothing and deletes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archiver_expires_exactly_the_archived_copies() {
    use chronicle_kernel::archived::{run_archiver_expiring, ArchivePolicy, ArchiverOptions};
    let Some(env) = AwsTestEnv::create("archiver expiry").await else {
        return;
    };
    let (ddb, table) = (&env.clients.dynamodb, env.settings.events_table.as_str());
    // aws-setup turned the table's TTL on, on the attribute `expire` sets.
    let ttl = ddb
        .describe_time_to_live()
        .table_name(table)
        .send()
        .await
        .expect("DescribeTimeToLive");
    let ttl = ttl.time_to_live_description().expect("a TTL description");
    assert_eq!(ttl.attribute_name(), Some(item::EXPIRES_AT));
    assert!(
        matches!(
            ttl.time_to_live_status(),
            Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
        ),
        "{ttl:?}"
    );
    let store = DynamoEventStore::new(ddb.clone(), table);
    let snapshots =
        chronicle_aws::S3SnapshotStore::new(env.clients.s3.clone(), &env.settings.snapshot_bucket);
    let archive =
        chronicle_aws::S3Archive::new(env.clients.s3.clone(), &env.settings.archive_bucket);
    let (a, b, c) = (kit::new_stream(), kit::new_stream(), kit::new_stream());
    for (s, n) in [(&a, 5), (&b, 4), (&c, 4)] {
        store
            .append(&kit::request(s, 0, kit::sealed_events(s, n)))
            .await
            .expect("append");
    }
    // c's v2 gets another hash behind the store's back: its chain no longer verifies.
    ddb.update_item()
        .table_name(table)
        .key(item::PK, AttributeValue::S(item::stream_key(&c)))
        .key(item::SK, AttributeValue::N("2".into()))
        .update_expression("SET #h = :h")
        .expression_attribute_names("#h", item::HASH)
        .expression_attribute_values(":h", AttributeValue::S("0".repeat(64)))
        .send()
        .await
        .expect("UpdateItem");

    let mut opts = ArchiverOptions::new(ArchivePolicy::older_than(chrono::Duration::zero()));
    opts.expire_after = Some(chrono::Duration::days(7));
    let before = Utc::now();
    let report = run_archiver_expiring(&store, &snapshots, &archive, &opts, |_| {})
        .await
        .expect("archiver");
    assert_eq!(report.events_archived, 4 + 3, "{report:?}");
    assert_eq!(report.events_expiring, 4 + 3, "{report:?}");
    assert_eq!(report.refused.len(), 1, "{report:?}");
    assert_eq!(report.refused[0].aggregate_id, c.aggregate_id);
    assert_eq!(report.refused[0].version, 2);

    let week = TimeDelta::days(7).num_seconds();
    let (lo, hi) = (before.timestamp() + week, Utc::now().timestamp() + week);
    for (s, n) in [(&a, 5u64), (&b, 4)] {
        let items = stored(ddb, table, s).await;
        assert_eq!(items.len() as u64, n, "nothing deleted");
        for (v, _, exp) in items {
            if v < n {
                let exp = exp.unwrap_or_else(|| panic!("{s} v{v} is archived but not expiring"));
                assert!((lo..=hi).contains(&exp), "{s} v{v} expires at {exp}");
            } else {
                assert_eq!(exp, None, "{s}: the head v{v} never expires");
            }
        }
    }
    assert!(
        stored(ddb, table, &c)
            .await
            .iter()
            .all(|(_, _, e)| e.is_none()),
        "a refused stream is not expired"
    );

    // Directly: a hash that is not the stored one, or a version that is not stored, is
    // skipped, uncounted, and creates nothing.
    let items = stored(ddb, table, &b).await;
    let at = Utc::now() + TimeDelta::days(1);
    let marked = store
        .expire(
            &b,
            &[
                (items[3].0, "f".repeat(64)),
                (99, items[0].1.clone()),
                (items[0].0, items[0].1.clone()),
            ],
            at,
        )
        .await
        .expect("expire");
    assert_eq!(marked, 1, "only the copy with the archived hash");
    let after = stored(ddb, table, &b).await;
    assert_eq!(after.len(), 4, "no item created");
    assert_eq!(after[0].2, Some(at.timestamp()));
    assert_eq!(after[3].2, None);
    // Items that carry the TTL attribute still read and verify.
    assert_eq!(
        chronicle_kernel::chain::verify_stream(&store, &b)
            .await
            .expect("verify"),
        Ok(4)
    );
    env.remove().await;
}

/// A run cut short after storing a segment leaves its hot copies unmarked; the next run with
/// expiry marks them (only those), and a run after that marks nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archiver_marks_what_an_interrupted_run_left() {
    use chronicle_kernel::archived::{run_archiver_expiring, ArchivePolicy, ArchiverOptions};
    let Some(env) = AwsTestEnv::create("archiver catch-up").await else {
        return;
    };
    let (ddb, table) = (&env.clients.dynamodb, env.settings.events_table.as_str());
    let store = DynamoEventStore::new(ddb.clone(), table);
    let snapshots =
        chronicle_aws::S3SnapshotStore::new(env.clients.s3.clone(), &env.settings.snapshot_bucket);
    let archive =
        chronicle_aws::S3Archive::new(env.clients.s3.clone(), &env.settings.archive_bucket);
    let s = kit::new_stream();
    store
        .append(&kit::request(&s, 0, kit::sealed_events(&s, 4)))
        .await
        .expect("append");

    // Archived, not marked: as if the run stopped right after storing the segment.
    let mut opts = ArchiverOptions::new(ArchivePolicy::older_than(chrono::Duration::zero()));
    let first = run_archiver_expiring(&store, &snapshots, &archive, &opts, |_| {})
        .await
        .expect("archiver");
    assert_eq!((first.events_archived, first.events_expiring), (3, 0));
    assert_eq!(store.unexpired(&s, 3).await.expect("unexpired").len(), 3);

    opts.expire_after = Some(chrono::Duration::days(7));
    let second = run_archiver_expiring(&store, &snapshots, &archive, &opts, |_| {})
        .await
        .expect("archiver");
    assert_eq!(
        (second.events_archived, second.events_expiring),
        (0, 3),
        "{second:?}"
    );
    let marked: Vec<(u64, bool)> = stored(ddb, table, &s)
        .await
        .into_iter()
        .map(|(v, _, exp)| (v, exp.is_some()))
        .collect();
    assert_eq!(marked, vec![(1, true), (2, true), (3, true), (4, false)]);
    assert!(store.unexpired(&s, 3).await.expect("unexpired").is_empty());

    let third = run_archiver_expiring(&store, &snapshots, &archive, &opts, |_| {})
        .await
        .expect("archiver");
    assert_eq!((third.events_archived, third.events_expiring), (0, 0));
    env.remove().await;
}

/// The idempotency item carries the table's TTL attribute (its expiry in epoch seconds); items
/// stored before records expired (no `expires_at`) count for the default retention after their
/// recorded time: a recent one takes its key, an older one reads as absent and is overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_items_expire_through_the_ttl_attribute() {
    let Some(env) = AwsTestEnv::create("idempotency ttl").await else {
        return;
    };
    let (ddb, table) = (&env.clients.dynamodb, env.settings.events_table.as_str());
    let store = DynamoEventStore::new(ddb.clone(), table);
    let get = |key: String| async move {
        ddb.get_item()
            .table_name(table)
            .key(item::PK, AttributeValue::S(item::idempotency_key(&key)))
            .key(item::SK, AttributeValue::N("0".into()))
            .consistent_read(true)
            .send()
            .await
            .expect("GetItem")
            .item
    };

    let stream = kit::new_stream();
    let key = kit::unique("key");
    let record = kit::idempotency_record(&key, &stream);
    let mut req = kit::request(&stream, 0, kit::events(&stream, 0, 1));
    req.idempotency = Some(record.clone());
    store.append(&req).await.expect("append");
    let it = get(key.clone()).await.expect("the idempotency item");
    assert_eq!(
        it.get(item::EXPIRES_AT),
        Some(&AttributeValue::N(
            record.expires_at.timestamp().to_string()
        )),
        "the TTL attribute holds the record's expiry"
    );
    assert!(
        stored(ddb, table, &stream)
            .await
            .iter()
            .all(|(_, _, e)| e.is_none()),
        "events get no expiry from their command's record"
    );

    // Items from before expiry: `expires_at` removed, recorded a minute and eight days ago.
    let legacy = |age: TimeDelta| {
        let key = kit::unique("legacy");
        let mut it: std::collections::HashMap<String, AttributeValue> = serde_dynamo::to_item(
            item::IdempotencyItem::from_record(&kit::idempotency_record(&key, &stream)),
        )
        .expect("an item");
        let recorded = chronicle_kernel::envelope::now() - age;
        it.remove(item::EXPIRES_AT);
        it.insert(
            item::RECORDED_AT.into(),
            AttributeValue::S(chronicle_kernel::envelope::format_timestamp(&recorded)),
        );
        (key, recorded, it)
    };
    let (recent, recent_at, recent_item) = legacy(TimeDelta::minutes(1));
    let (old, _, old_item) = legacy(TimeDelta::days(8));
    for it in [recent_item, old_item] {
        ddb.put_item()
            .table_name(table)
            .set_item(Some(it))
            .send()
            .await
            .expect("PutItem");
    }
    let got = store.idempotency_record(&recent).await.expect("read");
    assert_eq!(
        got.map(|r| r.expires_at),
        Some(item::legacy_expiry(recent_at)),
        "a recent record without an expiry lives for the default retention"
    );
    assert_eq!(store.idempotency_record(&old).await.expect("read"), None);
    let append_with = |key: &str, expected: u64| {
        let mut req = kit::request(&stream, expected, kit::events(&stream, expected, 1));
        req.idempotency = Some(kit::idempotency_record(key, &stream));
        req
    };
    match store.append(&append_with(&recent, 1)).await {
        Err(chronicle_kernel::AppendError::DuplicateIdempotencyKey(k)) => assert_eq!(k, recent),
        other => panic!("a recent record without an expiry takes its key, got {other:?}"),
    }
    let renewed = append_with(&old, 1);
    store
        .append(&renewed)
        .await
        .expect("an old record's key is free");
    assert_eq!(
        store.idempotency_record(&old).await.expect("read"),
        renewed.idempotency.clone()
    );
    let it = get(old).await.expect("the renewed item");
    assert!(
        matches!(it.get(item::EXPIRES_AT), Some(AttributeValue::N(_))),
        "{it:?}"
    );
    env.remove().await;
}

/// A test that fails half-way leaves nothing behind: its environment, dropped without
/// `remove`, removes what it made. Leftovers cost money on an account and, on DynamoDB Local,
/// slow down every later test (each table with TTL on keeps one of the 10 threads its TTL
/// sweeps and index builds share busy: an index added by `aws-setup` then stays CREATING).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_test_leaves_no_resources_behind() {
    if !chronicle_aws::testing::enabled() {
        eprintln!("skipped a failed test's cleanup: the AWS suite is off");
        return;
    }
    let (names_tx, names_rx) = tokio::sync::oneshot::channel();
    let failed = tokio::spawn(async move {
        let env = AwsTestEnv::create("left behind").await.expect("on");
        let _ = names_tx.send((env.clients.clone(), env.settings.clone()));
        // A failure, without the panic message a real one prints.
        std::panic::resume_unwind(Box::new("a failure half-way"));
    })
    .await;
    assert!(failed.is_err_and(|e| e.is_panic()));
    let (clients, settings) = names_rx.await.expect("the names");
    for table in [&settings.events_table, &settings.read_table] {
        let got = clients
            .dynamodb
            .describe_table()
            .table_name(table)
            .send()
            .await;
        // Gone, or on its way out (DynamoDB takes a moment to delete a table).
        let gone = match &got {
            Ok(out) => {
                out.table().and_then(|t| t.table_status())
                    == Some(&aws_sdk_dynamodb::types::TableStatus::Deleting)
            }
            Err(e) => e
                .as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()),
        };
        assert!(gone, "table {table} is left: {got:?}");
    }
    for bucket in [&settings.snapshot_bucket, &settings.archive_bucket] {
        assert!(
            clients
                .s3
                .head_bucket()
                .bucket(bucket)
                .send()
                .await
                .is_err(),
            "bucket {bucket} is left"
        );
    }
}
