//! The AWS test environment: uniquely named resources on whatever endpoint the standard
//! settings point at (moto in CI, LocalStack or a real account by changing `AWS_ENDPOINT_URL`).
//!
//! AWS tests run when `CHRONICLE_AWS_TESTS=1` (the README's test command sets it after starting
//! moto); otherwise they say they were skipped, so a plain `cargo test` works offline.

use crate::{setup, Clients, Settings};

pub mod faults;

pub const ENABLE_VAR: &str = "CHRONICLE_AWS_TESTS";

/// Resources created for one test, removed by [`AwsTestEnv::remove`], or when it is dropped
/// without (a test that failed half-way): left behind, they cost money on a real account and,
/// on DynamoDB Local, slow every later test down (its TTL sweeps and index builds share 10
/// threads across all tables, and each table with TTL on keeps one busy).
pub struct AwsTestEnv {
    pub clients: Clients,
    pub settings: Settings,
    removed: bool,
}

/// Whether the AWS suite is switched on.
pub fn enabled() -> bool {
    std::env::var(ENABLE_VAR).is_ok_and(|v| v == "1")
}

impl AwsTestEnv {
    /// `None` (with a note on stderr) when the AWS suite is off.
    pub async fn create(test: &str) -> Option<Self> {
        let env = Self::names_only(test).await?;
        if let Err(e) = setup::ensure(&env.clients, &env.settings).await {
            panic!("{test}: creating test resources failed (is the endpoint up?): {e}");
        }
        Some(env)
    }

    /// Unique names, nothing created yet (for testing the creation itself).
    pub async fn names_only(test: &str) -> Option<Self> {
        if !enabled() {
            eprintln!(
                "skipped {test}: set {ENABLE_VAR}=1 and AWS_ENDPOINT_URL (./scripts/test.sh does)"
            );
            return None;
        }
        let clients = Clients::from_env().await;
        let id = uuid::Uuid::new_v4().simple().to_string();
        // Bucket names: lowercase, at most 63 characters.
        let base = format!("ct-{}", &id[..16]);
        let settings = Settings {
            events_table: format!("{base}-events"),
            read_table: format!("{base}-read"),
            snapshot_bucket: format!("{base}-snapshots"),
            archive_bucket: format!("{base}-archive"),
            event_stream: format!("{base}-stream"),
            anchor_bucket: format!("{base}-anchors"),
            key_table: format!("{base}-keys"),
            key_kms_key: None,
            snapshot_every: 100,
            idempotency_retention: chronicle_kernel::DEFAULT_IDEMPOTENCY_RETENTION,
        };
        Some(Self {
            clients,
            settings,
            removed: false,
        })
    }

    /// The same settings as environment variables, for a child process.
    pub fn env_vars(&self) -> Vec<(&'static str, String)> {
        let s = &self.settings;
        let mut vars = vec![
            ("CHRONICLE_EVENTS_TABLE", s.events_table.clone()),
            ("CHRONICLE_READ_TABLE", s.read_table.clone()),
            ("CHRONICLE_SNAPSHOT_BUCKET", s.snapshot_bucket.clone()),
            ("CHRONICLE_ARCHIVE_BUCKET", s.archive_bucket.clone()),
            ("CHRONICLE_EVENT_STREAM", s.event_stream.clone()),
            ("CHRONICLE_ANCHOR_BUCKET", s.anchor_bucket.clone()),
            ("CHRONICLE_KEY_TABLE", s.key_table.clone()),
            ("CHRONICLE_SNAPSHOT_EVERY", s.snapshot_every.to_string()),
            (
                "CHRONICLE_IDEMPOTENCY_RETENTION",
                humantime::format_duration(s.idempotency_retention).to_string(),
            ),
        ];
        if let Some(key) = &s.key_kms_key {
            vars.push(("CHRONICLE_KEY_KMS_KEY", key.clone()));
        }
        vars
    }

    pub async fn remove(mut self) {
        self.removed = true;
        if let Err(e) = setup::remove(&self.clients, &self.settings).await {
            panic!("removing test resources failed: {e}");
        }
    }
}

impl Drop for AwsTestEnv {
    /// Removes what [`AwsTestEnv::remove`] was not called for, best effort and bounded: a
    /// failing test still fails with its own message. On a thread of its own, with clients of
    /// its own, since the test's runtime may be the one unwinding.
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let settings = self.settings.clone();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let clients = Clients::from_env().await;
                tokio::time::timeout(
                    std::time::Duration::from_secs(60),
                    setup::remove(&clients, &settings),
                )
                .await
                .map_err(|_| "timed out".to_owned())?
                .map_err(|e| e.to_string())
            })
        });
        let prefix = self.settings.events_table.trim_end_matches("-events");
        match cleanup.join() {
            Ok(Ok(())) => eprintln!("removed the test resources {prefix}-* left behind"),
            Ok(Err(e)) => eprintln!("could not remove the test resources {prefix}-*: {e}"),
            Err(_) => eprintln!("could not remove the test resources {prefix}-*"),
        }
    }
}

/// Every record on a Kinesis stream, shard by shard from the start (what a consumer that
/// started at TRIM_HORIZON has seen).
pub async fn kinesis_records(
    kinesis: &aws_sdk_kinesis::Client,
    stream: &str,
) -> Vec<aws_sdk_kinesis::types::Record> {
    use aws_sdk_kinesis::types::ShardIteratorType;
    let shards = kinesis
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .expect("ListShards");
    let mut out = Vec::new();
    for shard in shards.shards() {
        let mut it = kinesis
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard.shard_id())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .expect("GetShardIterator")
            .shard_iterator;
        while let Some(i) = it {
            let got = kinesis
                .get_records()
                .shard_iterator(i)
                .send()
                .await
                .expect("GetRecords");
            if got.records().is_empty() {
                break;
            }
            it = got.next_shard_iterator().map(str::to_owned);
            out.extend(got.records);
        }
    }
    out
}
