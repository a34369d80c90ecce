//! Configuration shared by every function and the CLI: resource names from `CHRONICLE_*`
//! environment variables, AWS settings from the standard `AWS_*` ones.

use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use std::time::Duration;

/// A DynamoDB call not answered in this long is taken as lost and retried (the SDK's standard
/// retry: 3 attempts). Without it a hung connection holds a command until the Lambda times
/// out, or for ever on the local server; three attempts and their backoff stay well inside
/// API Gateway's 29 s. Only where none is configured already.
pub const DYNAMODB_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Names of the AWS resources Chronicle uses. Every field has an environment variable; the
/// defaults are the names `chronicle aws-setup` creates for local development.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `CHRONICLE_EVENTS_TABLE`: events and idempotency records (stream enabled).
    pub events_table: String,
    /// `CHRONICLE_READ_TABLE`: read models and their checkpoints.
    pub read_table: String,
    /// `CHRONICLE_SNAPSHOT_BUCKET`.
    pub snapshot_bucket: String,
    /// `CHRONICLE_ARCHIVE_BUCKET`: archived event segments.
    pub archive_bucket: String,
    /// `CHRONICLE_EVENT_STREAM`: the Kinesis stream events are published to.
    pub event_stream: String,
    /// `CHRONICLE_ANCHOR_BUCKET`: anchors of the store's heads, under S3 Object Lock.
    pub anchor_bucket: String,
    /// `CHRONICLE_KEY_TABLE`: data subjects' keys (no stream, no point-in-time recovery).
    pub key_table: String,
    /// `CHRONICLE_KEY_KMS_KEY` (unset by default): a KMS key (id, ARN or alias) that wraps
    /// each data subject's key before it is stored in the key table.
    pub key_kms_key: Option<String>,
    /// `CHRONICLE_SNAPSHOT_EVERY`: events between snapshots (0: never).
    pub snapshot_every: u64,
    /// `CHRONICLE_IDEMPOTENCY_RETENTION` (humantime, default `7d`): how long a command's
    /// idempotency record answers its repeats.
    pub idempotency_retention: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}: {problem}")]
pub struct ConfigError {
    pub name: &'static str,
    pub problem: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            events_table: "chronicle-events".into(),
            read_table: "chronicle-read".into(),
            snapshot_bucket: "chronicle-snapshots".into(),
            archive_bucket: "chronicle-archive".into(),
            event_stream: "chronicle-events".into(),
            anchor_bucket: "chronicle-anchors".into(),
            key_table: "chronicle-keys".into(),
            key_kms_key: None,
            snapshot_every: 100,
            idempotency_retention: chronicle_kernel::DEFAULT_IDEMPOTENCY_RETENTION,
        }
    }
}

/// Parses an idempotency retention: a humantime duration (`7d`, `12h`, `90s`) above zero. A
/// zero retention would answer no retry from its record, which is never what a client wants.
pub fn parse_retention(value: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(value.trim())
        .map_err(|e| format!("`{value}` is not a duration like `7d` or `12h`: {e}"))?;
    if d.is_zero() {
        return Err(format!(
            "`{value}`: the retention must be above zero (a zero retention answers no retry)"
        ));
    }
    if chrono::Duration::from_std(d).is_err() {
        return Err(format!("`{value}` is too long"));
    }
    Ok(d)
}

impl Settings {
    /// Every environment variable the functions and the CLI read, for docs and the template check.
    pub const ENV_VARS: [&'static str; 10] = [
        "CHRONICLE_EVENTS_TABLE",
        "CHRONICLE_READ_TABLE",
        "CHRONICLE_SNAPSHOT_BUCKET",
        "CHRONICLE_ARCHIVE_BUCKET",
        "CHRONICLE_EVENT_STREAM",
        "CHRONICLE_ANCHOR_BUCKET",
        "CHRONICLE_KEY_TABLE",
        "CHRONICLE_KEY_KMS_KEY",
        "CHRONICLE_SNAPSHOT_EVERY",
        "CHRONICLE_IDEMPOTENCY_RETENTION",
    ];

    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// From any variable source (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let d = Self::default();
        let name = |var: &'static str, default: String| -> Result<String, ConfigError> {
            match get(var) {
                None => Ok(default),
                Some(v) if v.trim().is_empty() => Err(ConfigError {
                    name: var,
                    problem: "is set but empty".into(),
                }),
                Some(v) => Ok(v),
            }
        };
        let snapshot_every = match get("CHRONICLE_SNAPSHOT_EVERY") {
            None => d.snapshot_every,
            Some(v) => v.trim().parse().map_err(|_| ConfigError {
                name: "CHRONICLE_SNAPSHOT_EVERY",
                problem: format!("`{v}` is not a whole number of events"),
            })?,
        };
        let idempotency_retention = match get("CHRONICLE_IDEMPOTENCY_RETENTION") {
            None => d.idempotency_retention,
            Some(v) => parse_retention(&v).map_err(|problem| ConfigError {
                name: "CHRONICLE_IDEMPOTENCY_RETENTION",
                problem,
            })?,
        };
        Ok(Self {
            events_table: name("CHRONICLE_EVENTS_TABLE", d.events_table)?,
            read_table: name("CHRONICLE_READ_TABLE", d.read_table)?,
            snapshot_bucket: name("CHRONICLE_SNAPSHOT_BUCKET", d.snapshot_bucket)?,
            archive_bucket: name("CHRONICLE_ARCHIVE_BUCKET", d.archive_bucket)?,
            event_stream: name("CHRONICLE_EVENT_STREAM", d.event_stream)?,
            anchor_bucket: name("CHRONICLE_ANCHOR_BUCKET", d.anchor_bucket)?,
            key_table: name("CHRONICLE_KEY_TABLE", d.key_table)?,
            key_kms_key: match get("CHRONICLE_KEY_KMS_KEY") {
                None => None,
                Some(_) => Some(name("CHRONICLE_KEY_KMS_KEY", String::new())?),
            },
            snapshot_every,
            idempotency_retention,
        })
    }
}

/// The SDK clients, built once per process (per Lambda cold start) and cloned freely.
#[derive(Clone, Debug)]
pub struct Clients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub s3: aws_sdk_s3::Client,
    pub kinesis: aws_sdk_kinesis::Client,
    /// Wraps data subjects' keys when `CHRONICLE_KEY_KMS_KEY` is set.
    pub kms: aws_sdk_kms::Client,
    pub sdk: aws_config::SdkConfig,
}

impl Clients {
    /// Loads region, credentials and endpoint from the standard `AWS_*` settings.
    pub async fn from_env() -> Self {
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .http_client(https_client())
            .load()
            .await;
        Self::new(sdk)
    }

    pub fn new(sdk: aws_config::SdkConfig) -> Self {
        // Emulators on loopback can't resolve virtual-host bucket names.
        let custom_endpoint =
            sdk.endpoint_url().is_some() || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
        let s3 = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(custom_endpoint)
            .build();
        let dynamodb = aws_sdk_dynamodb::config::Builder::from(&sdk)
            .timeout_config(with_attempt_timeout(&sdk, DYNAMODB_ATTEMPT_TIMEOUT))
            .build();
        Self {
            dynamodb: aws_sdk_dynamodb::Client::from_conf(dynamodb),
            s3: aws_sdk_s3::Client::from_conf(s3),
            kinesis: aws_sdk_kinesis::Client::new(&sdk),
            kms: aws_sdk_kms::Client::new(&sdk),
            sdk,
        }
    }
}

/// The HTTP client of every SDK client: rustls with ring, the one TLS stack in the functions
/// (the SDK's default would add AWS-LC, about a megabyte per bootstrap), and the system's root
/// certificates.
pub fn https_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// The SDK config's timeouts, with `attempt` as the attempt timeout unless one is set.
fn with_attempt_timeout(sdk: &aws_config::SdkConfig, attempt: Duration) -> TimeoutConfig {
    let current = sdk
        .timeout_config()
        .cloned()
        .unwrap_or_else(|| TimeoutConfig::builder().build());
    if current.operation_attempt_timeout().is_some() {
        return current;
    }
    current
        .to_builder()
        .operation_attempt_timeout(attempt)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_then_overrides() {
        assert_eq!(from(&[]).unwrap(), Settings::default());
        let s = from(&[
            ("CHRONICLE_EVENTS_TABLE", "ev"),
            ("CHRONICLE_SNAPSHOT_EVERY", "25"),
        ])
        .unwrap();
        assert_eq!(s.events_table, "ev");
        assert_eq!(s.snapshot_every, 25);
        assert_eq!(s.key_table, "chronicle-keys");
        assert_eq!(s.key_kms_key, None);
        assert_eq!(s.idempotency_retention, Duration::from_secs(7 * 86_400));
        let s = from(&[("CHRONICLE_IDEMPOTENCY_RETENTION", "12h 30m")]).unwrap();
        assert_eq!(s.idempotency_retention, Duration::from_secs(45_000));
        let s = from(&[
            ("CHRONICLE_KEY_TABLE", "keys"),
            ("CHRONICLE_KEY_KMS_KEY", "alias/chronicle-keys"),
        ])
        .unwrap();
        assert_eq!(s.key_table, "keys");
        assert_eq!(s.key_kms_key.as_deref(), Some("alias/chronicle-keys"));
    }

    #[test]
    fn dynamodb_calls_time_out_unless_configured_otherwise() {
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(2))
                    .build(),
            )
            .build();
        let c = Clients::new(sdk.clone());
        let t = c.dynamodb.config().timeout_config().expect("timeouts");
        assert_eq!(
            t.operation_attempt_timeout(),
            Some(DYNAMODB_ATTEMPT_TIMEOUT)
        );
        assert_eq!(t.connect_timeout(), Some(Duration::from_secs(2)), "kept");
        let own = sdk
            .to_builder()
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_attempt_timeout(Duration::from_secs(1))
                    .build(),
            )
            .build();
        let c = Clients::new(own);
        let t = c.dynamodb.config().timeout_config().expect("timeouts");
        assert_eq!(t.operation_attempt_timeout(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = from(&[("CHRONICLE_SNAPSHOT_EVERY", "often")]).unwrap_err();
        assert_eq!(e.name, "CHRONICLE_SNAPSHOT_EVERY");
        let e = from(&[("CHRONICLE_READ_TABLE", " ")]).unwrap_err();
        assert_eq!(e.name, "CHRONICLE_READ_TABLE");
        // Set but empty is a mistake, not "no KMS": unset it to store keys unwrapped.
        let e = from(&[("CHRONICLE_KEY_KMS_KEY", "")]).unwrap_err();
        assert_eq!(e.name, "CHRONICLE_KEY_KMS_KEY");
        for bad in ["0s", "0d 0h", "", "7x", "-1d", "forever"] {
            let e = from(&[("CHRONICLE_IDEMPOTENCY_RETENTION", bad)]).unwrap_err();
            assert_eq!(e.name, "CHRONICLE_IDEMPOTENCY_RETENTION", "{bad}");
        }
    }
}
