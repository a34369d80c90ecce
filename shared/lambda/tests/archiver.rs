//! The archiver function's handler on the endpoint, and the stream handlers' answer to the
//! records archiving causes: a MODIFY per expiring event (`expires_at` set) and a REMOVE per
//! event TTL deletes. Neither is an event to consume.

mod common;

use aws_lambda_events::dynamodb::Event;
use aws_sdk_dynamodb::types::AttributeValue;
use chronicle_aws::item;
use chronicle_kernel::{EventStore, ModelRef, ReadModelStore, ReadRange, SnapshotStore, StreamId};
use chronicle_lambda::archiver::{self, ArchiverSettings};
use chronicle_lambda::streams;
use common::*;

fn batch(records: Vec<aws_lambda_events::dynamodb::EventRecord>) -> Event {
    let mut e = Event::default();
    e.records = records;
    e
}

fn settings(after: &str, below_snapshot: bool, expire: &str) -> ArchiverSettings {
    ArchiverSettings::from_lookup(|k| match k {
        "CHRONICLE_ARCHIVE_AFTER" => Some(after.into()),
        "CHRONICLE_ARCHIVE_BELOW_SNAPSHOT" => Some(below_snapshot.to_string()),
        "CHRONICLE_EXPIRE_AFTER" => Some(expire.into()),
        _ => None,
    })
    .expect("settings")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archiver_handler_archives_expires_and_stream_handlers_ignore_the_aftermath() {
    let Some((env, app)) = common::app("archiver", 2).await else {
        return;
    };
    let id = "arch-1";
    let stream = StreamId::new("accounts", id);
    open_with(&app, id, "ada", &[10, 20, 30]).await; // v1..=4
    app.chronicle
        .aggregate("accounts")
        .expect("accounts")
        .snapshot(id, Some(3))
        .await
        .expect("snapshot at v3");

    // Below the snapshot and older than a day: nothing yet.
    let young = archiver::handle(&app, &settings("1d", true, "off"))
        .await
        .expect("archiver");
    assert_eq!(young["events_archived"], 0, "{young}");
    assert_eq!(young["streams"], 1, "{young}");
    // Below the snapshot at any age: v1..=3, marked to expire in a week.
    let run = archiver::handle(&app, &settings("0s", true, "7d"))
        .await
        .expect("archiver");
    assert_eq!(run["events_archived"], 3, "{run}");
    assert_eq!(run["events_expiring"], 3, "{run}");
    assert_eq!(run["segments"], 1, "{run}");
    // By age alone: nothing is left but the head, which is never archived.
    let again = archiver::handle(&app, &settings("0s", false, "7d"))
        .await
        .expect("archiver");
    assert_eq!(again["events_archived"], 0, "{again}");

    // What TTL does once `expires_at` passes: v1 goes. Reads through the archive still see it.
    let ddb = &app.clients.dynamodb;
    ddb.delete_item()
        .table_name(&app.settings.events_table)
        .key(item::PK, AttributeValue::S(item::stream_key(&stream)))
        .key(item::SK, AttributeValue::N("1".into()))
        .send()
        .await
        .expect("DeleteItem");
    let hot = app
        .events
        .read_stream(&stream, ReadRange::all())
        .await
        .expect("read");
    assert_eq!(
        hot.first().map(|e| e.version),
        Some(2),
        "v1 is gone from the table"
    );
    // The functions' store (what history, time travel and commands read) fills it in.
    let history = app
        .chronicle
        .events()
        .read_stream(&stream, ReadRange::all())
        .await
        .expect("read");
    assert_eq!(
        history.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(
        chronicle_kernel::chain::verify_stream(&**app.chronicle.events(), &stream)
            .await
            .expect("verify"),
        Ok(4),
        "the chain verifies across archive and table"
    );
    // A fresh process (no catalog cached): state at v1 and the history, through the service.
    let fresh = chronicle_lambda::App::new(
        env.clients.clone(),
        app.settings.clone(),
        chronicle_accounts::domain(),
    );
    let accounts = fresh.chronicle.aggregate("accounts").expect("accounts");
    let at_v1 = accounts.state(id, Some(1)).await.expect("state at v1");
    assert_eq!(
        (at_v1.version, &at_v1.body["balance"]),
        (1, &serde_json::json!(0))
    );
    let all = accounts
        .history(id, ReadRange::all(), false)
        .await
        .expect("history");
    assert_eq!(all.len(), 4);

    // The stream now holds MODIFY records (expires_at set) and a REMOVE (the deletion). Fed
    // alone, and also as synthetic copies of the INSERTs, every handler skips them.
    let all = stream_records(&app).await;
    let mut aftermath: Vec<_> = records_of(&all, id)
        .into_iter()
        .filter(|r| r.event_name != "INSERT")
        .collect();
    let names: Vec<&str> = aftermath.iter().map(|r| r.event_name.as_str()).collect();
    assert_eq!(
        (
            names.iter().filter(|n| **n == "MODIFY").count(),
            names.iter().filter(|n| **n == "REMOVE").count()
        ),
        (3, 1),
        "one MODIFY per expiring event, one REMOVE per deletion: {names:?}"
    );
    for r in records_of(&all, id)
        .into_iter()
        .filter(|r| r.event_name == "INSERT")
    {
        let mut modify = r.clone();
        modify.event_name = "MODIFY".into();
        modify.change.old_image = r.change.new_image.clone();
        modify.change.new_image.insert(
            item::EXPIRES_AT.into(),
            serde_dynamo::AttributeValue::N("4102444800".into()),
        );
        let mut remove = r.clone();
        remove.event_name = "REMOVE".into();
        remove.change.old_image = r.change.new_image.clone();
        remove.change.new_image = Default::default();
        aftermath.extend([modify, remove]);
    }
    let b = batch(aftermath);
    let r = streams::project(&app, &b).await;
    assert!(failures(&r).is_empty(), "{r:?}");
    let r = streams::publish(&app, &b).await;
    assert!(failures(&r).is_empty(), "{r:?}");
    let r = streams::snapshot(&app, &b).await;
    assert!(failures(&r).is_empty(), "{r:?}");
    assert!(
        app.read_models
            .get(&ModelRef::active("accounts_state"), id)
            .await
            .expect("read model")
            .is_none(),
        "nothing projected"
    );
    assert!(kinesis_records(&app).await.is_empty(), "nothing published");
    assert_eq!(
        app.snapshots
            .latest(&stream, None)
            .await
            .expect("snapshots")
            .map(|s| s.version),
        Some(3),
        "no new snapshot"
    );
    env.remove().await;
}
