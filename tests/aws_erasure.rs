//! Erasure by crypto-shredding on AWS (`chronicle serve --backend aws` and the CLI against the
//! local endpoint, its stream consumers running in-process as the functions would): personal
//! fields are ciphertext in every DynamoDB item (events, read models, keys), every S3 object
//! (snapshots, archive segments unpacked, anchors) and every Kinesis record, from the first
//! write; `chronicle forget --backend aws` removes the subject's key item's key and nothing
//! else; afterwards every read shows the fields erased, and `verify --all` passes throughout.

mod common;

use aws_sdk_dynamodb::types::AttributeValue;
use chronicle_aws::testing::AwsTestEnv;
use common::{erased, open_with_personal_data, Server};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

const NAME: &str = "Dana Katherine Scully";
const EMAIL: &str = "dana.scully@bureau.example";
const FOX_NAME: &str = "Fox William Mulder";
const FOX_EMAIL: &str = "fox@bureau.example";

/// Runs `chronicle ARGS --backend aws` with the test's resource names: (success, stdout, stderr).
fn chronicle_aws(vars: &[(&str, String)], args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_chronicle"))
        .args(args)
        .args(["--backend", "aws"])
        .env("RUST_LOG", "warn")
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("running chronicle");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every string and binary in an attribute, as bytes (numbers too: nothing is skipped).
fn attribute_bytes(v: &AttributeValue, out: &mut Vec<u8>) {
    match v {
        AttributeValue::S(s) | AttributeValue::N(s) => out.extend_from_slice(s.as_bytes()),
        AttributeValue::B(b) => out.extend_from_slice(b.as_ref()),
        AttributeValue::Ss(v) | AttributeValue::Ns(v) => {
            v.iter().for_each(|s| out.extend_from_slice(s.as_bytes()))
        }
        AttributeValue::Bs(v) => v.iter().for_each(|b| out.extend_from_slice(b.as_ref())),
        AttributeValue::L(v) => v.iter().for_each(|a| attribute_bytes(a, out)),
        AttributeValue::M(m) => m.iter().for_each(|(k, a)| {
            out.extend_from_slice(k.as_bytes());
            attribute_bytes(a, out)
        }),
        _ => {}
    }
    out.push(b'\n');
}

async fn scan(env: &AwsTestEnv, table: &str) -> Vec<HashMap<String, AttributeValue>> {
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let page = env
            .clients
            .dynamodb
            .scan()
            .table_name(table)
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .unwrap_or_else(|e| panic!("Scan {table}: {e:?}"));
        items.extend(page.items.unwrap_or_default());
        start = page.last_evaluated_key;
        if start.is_none() {
            return items;
        }
    }
}

/// Every object of a bucket: (key, bytes as a reader sees them).
async fn objects(env: &AwsTestEnv, bucket: &str) -> Vec<(String, Vec<u8>)> {
    let s3 = &env.clients.s3;
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(bucket)
            .set_continuation_token(token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("ListObjectsV2 {bucket}: {e:?}"));
        for o in page.contents() {
            let key = o.key().unwrap_or_default().to_owned();
            let body = s3
                .get_object()
                .bucket(bucket)
                .key(&key)
                .send()
                .await
                .unwrap_or_else(|e| panic!("GetObject {bucket}/{key}: {e:?}"))
                .body
                .collect()
                .await
                .expect("an object's body")
                .into_bytes();
            out.push((key.clone(), common::readable(&key, &body)));
        }
        token = page.next_continuation_token().map(str::to_owned);
        if token.is_none() {
            return out;
        }
    }
}

/// Everything stored anywhere for the test: (where, bytes).
async fn everything(env: &AwsTestEnv) -> Vec<(String, Vec<u8>)> {
    let s = &env.settings;
    let mut out = Vec::new();
    for table in [&s.events_table, &s.read_table, &s.key_table] {
        for (i, item) in scan(env, table).await.iter().enumerate() {
            let mut bytes = Vec::new();
            for (k, v) in item {
                bytes.extend_from_slice(k.as_bytes());
                attribute_bytes(v, &mut bytes);
            }
            out.push((format!("dynamodb {table} item {i}"), bytes));
        }
    }
    for bucket in [&s.snapshot_bucket, &s.archive_bucket, &s.anchor_bucket] {
        for (key, bytes) in objects(env, bucket).await {
            out.push((format!("s3 {bucket}/{key}"), bytes));
        }
    }
    for (i, r) in chronicle_aws::testing::kinesis_records(&env.clients.kinesis, &s.event_stream)
        .await
        .iter()
        .enumerate()
    {
        out.push((format!("kinesis record {i}"), r.data().as_ref().to_vec()));
    }
    out
}

fn holding<'a>(stored: &'a [(String, Vec<u8>)], needle: &str) -> Vec<&'a str> {
    stored
        .iter()
        .filter(|(_, b)| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        .map(|(w, _)| w.as_str())
        .collect()
}

#[track_caller]
fn nowhere(stored: &[(String, Vec<u8>)], plain: &[&str]) {
    for p in plain {
        let found = holding(stored, p);
        assert!(
            found.is_empty(),
            "{p:?} is stored in the clear in {found:?}"
        );
    }
}

/// Waits (bounded) until `found` holds of everything stored.
async fn until_stored(env: &AwsTestEnv, what: &str, found: impl Fn(&[(String, Vec<u8>)]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if found(&everything(env).await) {
            return;
        }
        assert!(Instant::now() < deadline, "never stored: {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_aws_personal_data_is_ciphertext_everywhere_and_forgetting_erases_every_read() {
    let Some(env) = AwsTestEnv::create("erasure on serve --backend aws").await else {
        return;
    };
    let mut vars = env.env_vars();
    for (k, v) in vars.iter_mut() {
        if *k == "CHRONICLE_SNAPSHOT_EVERY" {
            *v = "2".into();
        }
    }
    let server = Server::start_aws(&vars).await;
    server
        .command(
            "acc-dana",
            open_with_personal_data("dana", NAME, EMAIL),
            &[],
        )
        .await
        .expect_status(200);
    for amount in [100, 20, 3] {
        server
            .command(
                "acc-dana",
                json!({"type": "Deposit", "amount": amount}),
                &[],
            )
            .await
            .expect_status(200);
    }
    server
        .command(
            "acc-fox",
            open_with_personal_data("fox", FOX_NAME, FOX_EMAIL),
            &[],
        )
        .await
        .expect_status(200);

    // Reads with the key: the plaintext (state, history, the read model once projected).
    let state = server.consistent("acc-dana").await;
    assert_eq!(state.body["holder_name"], NAME, "{}", state.body);
    assert_eq!(server.history("acc-dana").await[0]["data"]["email"], EMAIL);
    server
        .eventually("/accounts/acc-dana", |r| {
            r.status == 200 && r.body["version"] == 4 && r.body["email"] == EMAIL
        })
        .await;
    let raw = server.get("/accounts/acc-dana/events?raw=true").await;
    let token = raw.body["events"][0]["data"]["holder_name"]
        .as_str()
        .expect("a token")
        .to_owned();
    assert!(token.starts_with("pii:v1:"), "{token}");

    // The consumers have done their part: a snapshot, the Kinesis records, the read model.
    until_stored(
        &env,
        "a snapshot and the Kinesis records with the token",
        |s| {
            let at = holding(s, &token);
            at.iter()
                .any(|w| w.starts_with("s3 ") && w.contains("snapshots"))
                && at.iter().any(|w| w.starts_with("kinesis"))
        },
    )
    .await;
    let (ok, out, err) = chronicle_aws(&vars, &["archive", "--older-than", "0s"]);
    assert!(ok, "archive: {out} {err}");
    let (ok, out, err) = chronicle_aws(&vars, &["anchor"]);
    assert!(ok, "anchor: {out} {err}");

    // Nowhere in the clear; the search does see the sealed field in each kind of copy.
    let stored = everything(&env).await;
    nowhere(&stored, &[NAME, EMAIL, FOX_NAME, FOX_EMAIL]);
    let at = holding(&stored, &token);
    for kind in [
        env.settings.events_table.as_str(),
        env.settings.read_table.as_str(),
        env.settings.snapshot_bucket.as_str(),
        env.settings.archive_bucket.as_str(),
        "kinesis",
    ] {
        assert!(
            at.iter().any(|w| w.contains(kind)),
            "the sealed field is not found in {kind}: {at:?}"
        );
    }
    let (ok, out, err) = chronicle_aws(&vars, &["verify", "--all"]);
    assert!(ok, "verify before forgetting: {out} {err}");

    // Forget Dana through the CLI: the key item loses its key, the erasure is recorded.
    let (ok, out, err) = chronicle_aws(&vars, &["forget", "dana"]);
    assert!(ok && out.contains("forgot dana"), "forget: {out} {err}");
    let (ok, out, _) = chronicle_aws(&vars, &["forget", "dana"]);
    assert!(ok && out.contains("forgotten already"), "{out}");
    let keys = scan(&env, &env.settings.key_table).await;
    let dana = keys
        .iter()
        .find(|i| i.get("subject") == Some(&AttributeValue::S("dana".into())))
        .expect("dana's key item stays, as a tombstone");
    assert!(
        !dana.contains_key("key"),
        "the key is still there: {dana:?}"
    );
    assert!(dana.contains_key("forgotten_at"));
    let fox = keys
        .iter()
        .find(|i| i.get("subject") == Some(&AttributeValue::S("fox".into())))
        .expect("fox's key item");
    assert!(fox.contains_key("key"), "fox keeps his key");

    // Every read: erased, right away (reads open tokens with the key store).
    erased(&server.consistent("acc-dana").await.body);
    erased(&server.get("/accounts/acc-dana?version=1").await.body);
    erased(&server.history("acc-dana").await[0]["data"]);
    erased(&server.get("/accounts/acc-dana").await.body);
    erased(&server.get("/accounts?owner=dana").await.body["accounts"][0]);
    let (ok, out, err) = chronicle_aws(&vars, &["history", "accounts", "acc-dana", "--json"]);
    assert!(ok, "history: {err}");
    let events: Value = serde_json::from_str(&out).expect("JSON history");
    erased(&events[0]["data"]);
    assert_eq!(
        server.consistent("acc-fox").await.body["holder_name"],
        FOX_NAME
    );
    // No new personal data for her; other commands go on.
    server
        .command(
            "acc-dana-2",
            open_with_personal_data("dana", NAME, EMAIL),
            &[],
        )
        .await
        .expect_error(422, "subject_forgotten");
    server
        .command("acc-dana", json!({"type": "Deposit", "amount": 1}), &[])
        .await
        .expect_status(200);

    // Nothing in the clear, nothing stored changed: every chain and the anchor verify.
    nowhere(&everything(&env).await, &[NAME, EMAIL, FOX_NAME, FOX_EMAIL]);
    let (ok, out, err) = chronicle_aws(&vars, &["verify", "--all"]);
    assert!(ok, "verify after forgetting: {out} {err}");

    drop(server);
    env.remove().await;
}
