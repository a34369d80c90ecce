//! Chronicle's Lambda functions as library code: each function crate under `functions/` is a
//! thin `main` calling one of the `run_*` functions here with the domain it serves (a
//! [`Domain`]: the team's aggregates, projections and reactions), and the CLI's `serve --backend aws`
//! calls the same handlers from its local event-source pollers. Each handler takes the ports
//! it needs (`streams::project_into`, `publish_to`, `snapshot_with`, `activity::consume_into`,
//! `archiver::archive_with`), so it runs on any adapters; the `App`-taking forms pass the AWS
//! ones.
//!
//! - [`http`]: the command and query functions (API Gateway HTTP API, payload v2), serving the
//!   same axum router as the local server.
//! - [`streams`]: the stream handlers: projector and publisher (DynamoDB Streams), snapshotter
//!   (Kinesis).
//! - [`activity`]: a Kinesis consumer keeping an activity-feed read model.
//! - [`reactions`]: the reactor, the domain's reactions fed from Kinesis.
//! - [`archiver`]: the scheduled archiver (older events to S3 segments, hot copies to expire).
//! - [`run_anchorer`]: the scheduled anchorer (every stream's head under one root, in the
//!   anchor bucket under Object Lock).
//! - [`records`]: stream records as the SDKs return them, converted into the records Lambda
//!   delivers (what the CLI's pollers and the tests hand the handlers).

pub mod activity;
pub mod archiver;
mod error;
pub mod http;
pub mod kinesis;
pub mod reactions;
pub mod records;
pub mod streams;

use chronicle_aws::{
    Clients, ConfigError, DynamoEventStore, DynamoKeyStore, DynamoReadModelStore, KinesisPublisher,
    S3AnchorLog, S3Archive, S3SnapshotStore, Settings,
};
use chronicle_kernel::archived::ArchivedEventStore;
use chronicle_kernel::{Chronicle, Domain, HandlerConfig, StoreError};
use std::sync::Arc;

pub use error::FunctionError;
pub use lambda_runtime::Error;

/// Everything a function needs, built once per cold start: SDK clients, adapters, registry.
#[derive(Clone)]
pub struct App {
    pub settings: Settings,
    pub clients: Clients,
    /// The hot store alone (the stream handlers and the archiver work on it).
    pub events: Arc<DynamoEventStore>,
    pub archive: Arc<S3Archive>,
    pub snapshots: Arc<S3SnapshotStore>,
    pub read_models: Arc<DynamoReadModelStore>,
    pub publisher: Arc<KinesisPublisher>,
    pub chronicle: Chronicle,
}

impl App {
    /// The adapters on `clients`, and the registry of `domain` on them.
    ///
    /// # Panics
    /// On a registration mistake in `domain` (see [`Domain::check`]).
    pub fn new(clients: Clients, settings: Settings, domain: Domain) -> Self {
        let events = Arc::new(DynamoEventStore::new(
            clients.dynamodb.clone(),
            &settings.events_table,
        ));
        let archive = Arc::new(S3Archive::new(clients.s3.clone(), &settings.archive_bucket));
        let snapshots = Arc::new(S3SnapshotStore::new(
            clients.s3.clone(),
            &settings.snapshot_bucket,
        ));
        let read_models = Arc::new(DynamoReadModelStore::new(
            clients.dynamodb.clone(),
            &settings.read_table,
        ));
        let publisher = Arc::new(KinesisPublisher::new(
            clients.kinesis.clone(),
            &settings.event_stream,
        ));
        let config = HandlerConfig {
            snapshot_every: settings.snapshot_every,
            // The snapshotter function takes snapshots off the command path.
            inline_snapshots: false,
            max_events_per_command: DynamoEventStore::MAX_EVENTS_PER_APPEND,
            idempotency_retention: settings.idempotency_retention,
            ..HandlerConfig::default()
        };
        // Commands and reads see one history: events whose hot copies expired are read from
        // the archive (only then: a read the hot store answers whole costs nothing more).
        let history = Arc::new(ArchivedEventStore::new(
            events.clone(),
            archive.clone() as Arc<dyn chronicle_kernel::archive::Archive>,
        ));
        let chronicle = Chronicle::builder_without_feed(
            history.clone(),
            snapshots.clone(),
            read_models.clone(),
            config,
        )
        .domain(domain)
        // No one-pass check on DynamoDB: `verify` walks stream by stream; archive segments
        // are held to the table, and the table to its anchors.
        .copies(history.clone())
        .anchors(
            events.clone(),
            history,
            Arc::new(
                S3AnchorLog::new(clients.s3.clone(), &settings.anchor_bucket)
                    .announcing_on(clients.kinesis.clone(), &settings.event_stream),
            ),
        )
        // Data subjects' keys: only the functions that seal or reveal personal data call it
        // (and only they are granted the key table).
        .keys(Arc::new(DynamoKeyStore::from_settings(&clients, &settings)))
        .build();
        Self {
            settings,
            clients,
            events,
            archive,
            snapshots,
            read_models,
            publisher,
            chronicle,
        }
    }

    /// Settings from `CHRONICLE_*`, AWS from the standard `AWS_*` variables.
    pub async fn from_env(domain: Domain) -> Result<Self, ConfigError> {
        let settings = Settings::from_env()?;
        Ok(Self::new(Clients::from_env().await, settings, domain))
    }
}

/// The log filter from `RUST_LOG`, else `AWS_LAMBDA_LOG_LEVEL`: target directives as in
/// `info` or `chronicle_kernel=debug,warn` (a level alone sets the default); `info` when both
/// are unset or unreadable. `Targets` rather than `EnvFilter`: no regex engine in every
/// bootstrap (docs/deploy.md), at the price of span and field directives nobody sets here.
pub fn log_filter(
    rust_log: Option<&str>,
    lambda_level: Option<&str>,
) -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    // Every directive a level or `target=level`: Targets alone would take a misspelt level
    // for a target name and log nothing.
    let parse = |s: &str| {
        let s = s.trim().to_lowercase();
        let level = |l: &str| l.trim().parse::<LevelFilter>().is_ok();
        let valid = s.split(',').all(|d| match d.split_once('=') {
            Some((target, l)) => !target.trim().is_empty() && level(l),
            None => level(d),
        });
        valid.then(|| s.parse::<Targets>().ok()).flatten()
    };
    rust_log
        .and_then(parse)
        .or_else(|| lambda_level.and_then(parse))
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO))
}

/// [`log_filter`] of this process's environment.
pub fn log_filter_from_env() -> tracing_subscriber::filter::Targets {
    let var = |name| std::env::var(name).ok();
    log_filter(
        var("RUST_LOG").as_deref(),
        var("AWS_LAMBDA_LOG_LEVEL").as_deref(),
    )
}

/// Structured logs: JSON inside Lambda (CloudWatch parses it), plain text elsewhere; the level
/// from [`log_filter_from_env`].
pub fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = log_filter_from_env();
    let registry = tracing_subscriber::registry();
    let result = if std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some() {
        let json = tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .without_time(); // CloudWatch stamps each line
        registry.with(json.with_filter(filter)).try_init()
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_filter(filter))
            .try_init()
    };
    // Already initialised (tests, or the CLI set it up): keep that one.
    let _ = result;
}

/// Logs a failure with its kind (the `errorType` the runtime reports for it).
fn logged(e: FunctionError, what: &str) -> FunctionError {
    tracing::error!(kind = e.kind(), error = %e, "{what}");
    e
}

async fn app_or_exit(domain: Domain) -> Result<App, Error> {
    init_tracing();
    App::from_env(domain)
        .await
        .map_err(|e| Error::from(logged(e.into(), "configuration")))
}

/// The command function: `POST /{type}/{id}/commands`.
pub async fn run_command(domain: Domain) -> Result<(), Error> {
    let app = app_or_exit(domain).await?;
    lambda_http::run(http::router(&app, chronicle_http::Routes::Commands)).await
}

/// The query function: state, time travel, history, lists.
pub async fn run_query(domain: Domain) -> Result<(), Error> {
    let app = app_or_exit(domain).await?;
    lambda_http::run(http::router(&app, chronicle_http::Routes::Reads)).await
}

/// Runs a function that takes events of type `E` and answers `R` (a batch response).
async fn run_handler<E, R, F, Fut>(domain: Domain, handler: F) -> Result<(), Error>
where
    E: serde::de::DeserializeOwned + Send + 'static,
    R: serde::Serialize + Send + 'static,
    F: Fn(App, E) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = R> + Send,
{
    let app = app_or_exit(domain).await?;
    lambda_runtime::run(lambda_runtime::service_fn(
        move |e: lambda_runtime::LambdaEvent<E>| {
            let (app, handler) = (app.clone(), handler.clone());
            async move { Ok::<_, Error>(handler(app, e.payload).await) }
        },
    ))
    .await
}

/// The projector function (DynamoDB Streams).
pub async fn run_projector(domain: Domain) -> Result<(), Error> {
    run_handler(domain, |app, e: aws_lambda_events::dynamodb::Event| async move {
        streams::project(&app, &e).await
    })
    .await
}

/// The publisher function (DynamoDB Streams to Kinesis).
pub async fn run_publisher(domain: Domain) -> Result<(), Error> {
    run_handler(domain, |app, e: aws_lambda_events::dynamodb::Event| async move {
        streams::publish(&app, &e).await
    })
    .await
}

/// The snapshotter function (Kinesis to S3: the events table's stream keeps two readers).
pub async fn run_snapshotter(domain: Domain) -> Result<(), Error> {
    run_handler(
        domain,
        |app, e: aws_lambda_events::kinesis::KinesisEvent| async move {
            streams::snapshot_kinesis(&app, &e).await
        },
    )
    .await
}

/// The activity-feed consumer (Kinesis).
pub async fn run_activity(domain: Domain) -> Result<(), Error> {
    run_handler(
        domain,
        |app, e: aws_lambda_events::kinesis::KinesisEvent| async move {
            activity::consume(&app, &e).await
        },
    )
    .await
}

/// The reactor function (Kinesis): the domain's reactions.
pub async fn run_reactor(domain: Domain) -> Result<(), Error> {
    run_handler(
        domain,
        |app, e: aws_lambda_events::kinesis::KinesisEvent| async move {
            reactions::react(&app, &e).await
        },
    )
    .await
}

/// The anchorer function (an EventBridge schedule; the payload is not read): anchors every
/// stream's head in the anchor bucket and on Kinesis, and answers with the anchor.
pub async fn run_anchorer(domain: Domain) -> Result<(), Error> {
    let app = app_or_exit(domain).await?;
    lambda_runtime::run(lambda_runtime::service_fn(
        move |_: lambda_runtime::LambdaEvent<serde_json::Value>| {
            let app = app.clone();
            async move {
                let anchor = app.chronicle.anchor().await.map_err(|e| {
                    let e = match e {
                        chronicle_kernel::Error::Store(s) => FunctionError::Store(s),
                        other => FunctionError::Store(StoreError::Backend(other.to_string())),
                    };
                    logged(e, "anchoring failed")
                })?;
                tracing::info!(anchor = ?anchor, "anchored");
                Ok::<_, FunctionError>(serde_json::to_value(anchor).unwrap_or_default())
            }
        },
    ))
    .await
}

/// The archiver function (an EventBridge schedule; the payload is not read). Its settings
/// come from `CHRONICLE_ARCHIVE_*` / `CHRONICLE_EXPIRE_AFTER` beside the usual ones.
pub async fn run_archiver(domain: Domain) -> Result<(), Error> {
    let app = app_or_exit(domain).await?;
    let settings = archiver::ArchiverSettings::from_env()
        .map_err(|e| Error::from(logged(e.into(), "configuration")))?;
    lambda_runtime::run(lambda_runtime::service_fn(
        move |_: lambda_runtime::LambdaEvent<serde_json::Value>| {
            let (app, settings) = (app.clone(), settings.clone());
            async move {
                archiver::handle(&app, &settings)
                    .await
                    .map_err(|e| logged(e.into(), "archiver run failed"))
            }
        },
    ))
    .await
}

#[cfg(test)]
mod log_tests {
    use super::log_filter;
    use tracing::Level;

    #[test]
    fn rust_log_then_the_lambda_level_then_info() {
        let f = log_filter(Some("chronicle_kernel=debug,warn"), Some("error"));
        assert!(f.would_enable("chronicle_kernel::command", &Level::DEBUG));
        assert!(f.would_enable("aws_smithy_runtime", &Level::WARN));
        assert!(!f.would_enable("aws_smithy_runtime", &Level::INFO));
        let f = log_filter(None, Some("DEBUG"));
        assert!(f.would_enable("anything", &Level::DEBUG));
        let f = log_filter(Some("infoo"), None);
        assert!(
            f.would_enable("anything", &Level::INFO),
            "a misspelt level: info"
        );
        let f = log_filter(Some("not a [filter"), None);
        assert!(f.would_enable("anything", &Level::INFO));
        assert!(!f.would_enable("anything", &Level::DEBUG));
        let f = log_filter(None, None);
        assert!(f.would_enable("anything", &Level::INFO));
    }
}
