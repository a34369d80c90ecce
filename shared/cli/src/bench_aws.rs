//! `chronicle bench --backend aws`: what commands and stream batches cost on DynamoDB, counted
//! on the wire by an SDK interceptor (`chronicle_aws::metering`) against whatever endpoint the
//! `AWS_*` settings name (moto, DynamoDB Local, an account), on fresh resources it creates and
//! removes. Each phase runs commands through the command function's code (`chronicle_lambda::App`)
//! and reports requests, write and read units per command, and dollars per million commands at
//! on-demand prices. The accounts sample is the workload, with a ledger of five-event commands.

use anyhow::{bail, Context};
use aws_lambda_events::dynamodb::Event;
use chronicle_aws::metering::{Meter, Usage, PRICES_AS_OF};
use chronicle_aws::{setup, Clients, Settings};
use chronicle_kernel::{Aggregate, CommandOptions, DomainError, DomainEvent, EventSchema};
use chronicle_lambda::App;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;

/// What the AWS bench measures with.
pub(crate) struct AwsBench {
    /// Commands per phase.
    pub commands: usize,
    pub json: bool,
}

/// A ledger whose one command posts any number of entries: the workload of multi-event
/// commands.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Ledger {
    entries: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type")]
enum LedgerCommand {
    Post { entries: u32 },
}

#[derive(Clone, Debug)]
struct Posted;

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl DomainError for Never {
    fn code(&self) -> &'static str {
        "never"
    }
}

impl DomainEvent for Posted {
    fn event_type(&self) -> &'static str {
        "Posted"
    }
    fn to_data(&self) -> Value {
        json!({"amount": 100})
    }
    fn from_data(_: &str, _: &Value) -> Result<Self, String> {
        Ok(Posted)
    }
}

impl Aggregate for Ledger {
    const TYPE: &'static str = "bench_ledger";
    const STATE_VERSION: u32 = 1;
    type Command = LedgerCommand;
    type Event = Posted;
    type Error = Never;
    type View = Value;

    fn schema() -> EventSchema {
        EventSchema::new().event("Posted", 1)
    }
    fn decide(&self, command: &LedgerCommand) -> Result<Vec<Posted>, Never> {
        let LedgerCommand::Post { entries } = command;
        Ok(vec![Posted; *entries as usize])
    }
    fn evolve(&mut self, _: &Posted) {
        self.entries += 1;
    }
    fn exists(&self) -> bool {
        true
    }
    fn view(&self, _: &str, version: u64) -> Value {
        json!({"entries": self.entries, "version": version})
    }
}

/// One phase's cost per command (or per event, for stream batches).
struct Phase {
    name: &'static str,
    per: &'static str,
    count: usize,
    usage: Usage,
}

impl Phase {
    fn report(&self) -> Value {
        let n = self.count as f64;
        json!({
            "phase": self.name,
            "per": self.per,
            "count": self.count,
            "write_units": self.usage.write_units / n,
            "read_units": self.usage.read_units / n,
            "dollars_per_million": self.usage.dollars() / n * 1e6,
            "requests": self.usage.requests.iter().map(|(k, v)| (k.clone(), json!(*v as f64 / n))).collect::<serde_json::Map<_, _>>(),
        })
    }

    fn line(&self) -> String {
        let n = self.count as f64;
        let requests: Vec<String> = self
            .usage
            .requests
            .iter()
            .map(|(k, v)| format!("{k} {:.2}", *v as f64 / n))
            .collect();
        format!(
            "{:<34} {:>6.2} WRU {:>6.2} RRU  ${:>7.2} per million {}s  ({})",
            self.name,
            self.usage.write_units / n,
            self.usage.read_units / n,
            self.usage.dollars() / n * 1e6,
            self.per,
            requests.join(", ")
        )
    }
}

pub(crate) async fn run(bench: AwsBench) -> anyhow::Result<()> {
    if bench.commands == 0 {
        bail!("--commands must be at least 1");
    }
    let base = Clients::from_env().await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let name = format!("cb-{}", &id[..16]);
    let settings = Settings {
        events_table: format!("{name}-events"),
        read_table: format!("{name}-read"),
        snapshot_bucket: format!("{name}-snapshots"),
        archive_bucket: format!("{name}-archive"),
        event_stream: format!("{name}-stream"),
        anchor_bucket: format!("{name}-anchors"),
        key_table: format!("{name}-keys"),
        ..Settings::default()
    };
    setup::ensure(&base, &settings)
        .await
        .context("creating the bench's resources (is the endpoint up?)")?;
    let outcome = phases(&bench, &base, &settings).await;
    if let Err(e) = setup::remove(&base, &settings).await {
        tracing::warn!(error = %e, "removing the bench's resources failed");
    }
    let phases = outcome?;
    if bench.json {
        println!(
            "{}",
            json!({
                "prices": PRICES_AS_OF,
                "price_per_million_write_units": chronicle_aws::metering::PRICE_PER_MILLION_WRITE_UNITS,
                "price_per_million_read_units": chronicle_aws::metering::PRICE_PER_MILLION_READ_UNITS,
                "phases": phases.iter().map(Phase::report).collect::<Vec<_>>(),
            })
        );
    } else {
        println!(
            "DynamoDB request units, counted on the wire; dollars at {PRICES_AS_OF} prices (${}/M writes, ${}/M reads):",
            chronicle_aws::metering::PRICE_PER_MILLION_WRITE_UNITS,
            chronicle_aws::metering::PRICE_PER_MILLION_READ_UNITS
        );
        for p in &phases {
            println!("{}", p.line());
        }
    }
    Ok(())
}

async fn phases(
    bench: &AwsBench,
    base: &Clients,
    settings: &Settings,
) -> anyhow::Result<Vec<Phase>> {
    let meter = Meter::new();
    let clients = meter.clients(base);
    for table in [&settings.events_table, &settings.read_table] {
        meter
            .learn(&base.dynamodb, table)
            .await
            .with_context(|| format!("describing {table}"))?;
    }
    let domain = chronicle_accounts::domain().aggregate::<Ledger>();
    let app = App::new(clients.clone(), settings.clone(), domain.clone());
    let accounts = app
        .chronicle
        .aggregate("accounts")
        .context("accounts are registered")?
        .clone();
    let ledgers = app
        .chronicle
        .aggregate(Ledger::TYPE)
        .context("the ledger is registered")?
        .clone();
    let n = bench.commands;
    let run = |svc: &Arc<dyn chronicle_kernel::AggregateService>,
               id: String,
               command: Value,
               key: Option<String>| {
        let svc = svc.clone();
        async move {
            let opts = CommandOptions {
                idempotency_key: key,
                ..CommandOptions::default()
            };
            svc.execute(&id, command.to_string().as_bytes(), opts)
                .await
                .with_context(|| format!("{id}: {command}"))
        }
    };
    let mut out = Vec::new();
    let mut measure = |name: &'static str, per: &'static str, count: usize, before: &Usage| {
        out.push(Phase {
            name,
            per,
            count,
            usage: meter.usage().since(before),
        });
    };

    // Accounts to work on (their opening is a command too: a new stream).
    let before = meter.usage();
    for i in 0..n {
        run(
            &accounts,
            format!("a-{i}"),
            json!({"type": "Open", "owner": "bench"}),
            None,
        )
        .await?;
    }
    measure("open (new stream, warm)", "command", n, &before);

    let before = meter.usage();
    for i in 0..n {
        let deposit = json!({"type": "Deposit", "amount": 100});
        run(&accounts, format!("a-{i}"), deposit, None).await?;
    }
    measure("deposit (1 event, warm)", "command", n, &before);

    let before = meter.usage();
    for i in 0..n {
        let deposit = json!({"type": "Deposit", "amount": 10});
        run(&accounts, format!("a-{i}"), deposit, Some(format!("k-{i}"))).await?;
    }
    measure("deposit with Idempotency-Key", "command", n, &before);

    let before = meter.usage();
    for i in 0..n {
        let deposit = json!({"type": "Deposit", "amount": 10});
        run(&accounts, format!("a-{i}"), deposit, Some(format!("k-{i}"))).await?;
    }
    measure("the same key again (a retry)", "command", n, &before);

    let before = meter.usage();
    for i in 0..n {
        let post = json!({"type": "Post", "entries": 5});
        run(&ledgers, format!("l-{i}"), post, None).await?;
    }
    measure("five events (new stream)", "command", n, &before);

    // A cold instance: a fresh registry (empty cache) for each command, as after a cold start.
    let before = meter.usage();
    for i in 0..n {
        let cold = App::new(clients.clone(), settings.clone(), domain.clone());
        let svc = cold
            .chronicle
            .aggregate("accounts")
            .context("accounts are registered")?
            .clone();
        run(
            &svc,
            format!("a-{i}"),
            json!({"type": "Deposit", "amount": 1}),
            None,
        )
        .await?;
    }
    measure("deposit (1 event, cold instance)", "command", n, &before);

    let before = meter.usage();
    for i in 0..n {
        let cold = App::new(clients.clone(), settings.clone(), domain.clone());
        let svc = cold
            .chronicle
            .aggregate("accounts")
            .context("accounts are registered")?
            .clone();
        let deposit = json!({"type": "Deposit", "amount": 1});
        run(&svc, format!("a-{i}"), deposit, Some(format!("cold-{i}"))).await?;
    }
    measure("deposit with key (cold instance)", "command", n, &before);

    // The table stream, as the projector and the publisher get it.
    let records = stream_records(base, &settings.events_table).await?;
    let events = records.iter().filter(|r| r.event_name == "INSERT").count();
    let before = meter.usage();
    for batch in records.chunks(100) {
        let mut e = Event::default();
        e.records = batch.to_vec();
        let resp = chronicle_lambda::streams::project(&app, &e).await;
        if !resp.batch_item_failures.is_empty() {
            bail!(
                "the projector failed a record: {:?}",
                resp.batch_item_failures
            );
        }
    }
    measure(
        "projector (both read models)",
        "event",
        events.max(1),
        &before,
    );
    let before = meter.usage();
    for batch in records.chunks(100) {
        let mut e = Event::default();
        e.records = batch.to_vec();
        let resp = chronicle_lambda::streams::publish(&app, &e).await;
        if !resp.batch_item_failures.is_empty() {
            bail!(
                "the publisher failed a record: {:?}",
                resp.batch_item_failures
            );
        }
    }
    measure("publisher (to Kinesis)", "event", events.max(1), &before);
    Ok(out)
}

/// Every record of the table's stream so far, shard by shard, as Lambda would deliver them.
async fn stream_records(
    clients: &Clients,
    table: &str,
) -> anyhow::Result<Vec<aws_lambda_events::dynamodb::EventRecord>> {
    use aws_sdk_dynamodbstreams::types::ShardIteratorType;
    let arn = chronicle_lambda::records::table_stream_arn(&clients.dynamodb, table)
        .await
        .map_err(anyhow::Error::msg)?;
    let streams = aws_sdk_dynamodbstreams::Client::new(&clients.sdk);
    let described = streams.describe_stream().stream_arn(&arn).send().await?;
    let mut out = Vec::new();
    for shard in described
        .stream_description()
        .map(|d| d.shards())
        .unwrap_or_default()
    {
        let Some(shard_id) = shard.shard_id() else {
            continue;
        };
        let mut iterator = streams
            .get_shard_iterator()
            .stream_arn(&arn)
            .shard_id(shard_id)
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await?
            .shard_iterator;
        while let Some(it) = iterator {
            let got = streams.get_records().shard_iterator(it).send().await?;
            let records = got.records.unwrap_or_default();
            if records.is_empty() {
                break;
            }
            out.extend(
                records
                    .into_iter()
                    .map(|r| chronicle_lambda::records::lambda_record(r, &arn)),
            );
            iterator = got.next_shard_iterator;
        }
    }
    Ok(out)
}
