//! What only the DynamoDB event store promises beyond the contract: reads past DynamoDB's
//! 1 MB page.

use chronicle_aws::testing::AwsTestEnv;
use chronicle_aws::DynamoEventStore;
use chronicle_kernel::{EventStore, ReadRange};
use chronicle_testkit as kit;
use serde_json::json;

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
    env.remove().await;
}
