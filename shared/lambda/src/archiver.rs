//! The archiver function, run on a schedule (daily): copies older events of every stream into
//! segments in the archive bucket, then (when configured) marks their hot copies in DynamoDB
//! to expire through the table's TTL. Each run picks up where the archive ends, so a run cut
//! short by the Lambda timeout loses nothing: the next one goes on from there.

use crate::App;
use chronicle_aws::ConfigError;
use chronicle_kernel::archive::Archive;
use chronicle_kernel::archived::{
    run_archiver_expiring, ArchivePolicy, ArchiveReport, ArchiverOptions,
};
use chronicle_kernel::{EventStore, Expiry, SnapshotStore, StoreError, StreamListing};
use serde::Serialize;

/// What to archive and when hot copies expire, from the function's environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiverSettings {
    /// `CHRONICLE_ARCHIVE_AFTER` (default `30d`): only events recorded longer ago than this.
    pub archive_after: chrono::Duration,
    /// `CHRONICLE_ARCHIVE_BELOW_SNAPSHOT` (default `true`): only events at or below their
    /// stream's latest snapshot too, so loading an aggregate never needs the archive.
    pub below_snapshot: bool,
    /// `CHRONICLE_EXPIRE_AFTER` (default off): archived hot copies expire this long after
    /// the run; `None` keeps them.
    pub expire_after: Option<chrono::Duration>,
}

impl Default for ArchiverSettings {
    fn default() -> Self {
        Self {
            archive_after: chrono::Duration::days(30),
            below_snapshot: true,
            expire_after: None,
        }
    }
}

impl ArchiverSettings {
    /// The variables the archiver reads beside [`chronicle_aws::Settings::ENV_VARS`].
    pub const ENV_VARS: [&'static str; 3] = [
        "CHRONICLE_ARCHIVE_AFTER",
        "CHRONICLE_ARCHIVE_BELOW_SNAPSHOT",
        "CHRONICLE_EXPIRE_AFTER",
    ];

    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// From any variable source (tests pass a map). Durations are humantime's: `30d`,
    /// `12h 30m`, `0s`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let d = Self::default();
        let set = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let archive_after = match set("CHRONICLE_ARCHIVE_AFTER") {
            None => d.archive_after,
            Some(v) => duration("CHRONICLE_ARCHIVE_AFTER", &v)?,
        };
        let below_snapshot = match set("CHRONICLE_ARCHIVE_BELOW_SNAPSHOT") {
            None => d.below_snapshot,
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                _ => {
                    return Err(ConfigError {
                        name: "CHRONICLE_ARCHIVE_BELOW_SNAPSHOT",
                        problem: format!("`{v}` is not true or false"),
                    })
                }
            },
        };
        // Empty or `off`: hot copies are kept (the safe default).
        let expire_after = match set("CHRONICLE_EXPIRE_AFTER") {
            None => None,
            Some(v) if v.trim().eq_ignore_ascii_case("off") => None,
            Some(v) => Some(duration("CHRONICLE_EXPIRE_AFTER", &v)?),
        };
        Ok(Self {
            archive_after,
            below_snapshot,
            expire_after,
        })
    }
}

fn duration(name: &'static str, value: &str) -> Result<chrono::Duration, ConfigError> {
    let problem = |why: String| ConfigError {
        name,
        problem: format!("`{value}` is not a duration like `30d` or `12h`: {why}"),
    };
    let std = humantime::parse_duration(value.trim()).map_err(|e| problem(e.to_string()))?;
    chrono::Duration::from_std(std).map_err(|e| problem(e.to_string()))
}

/// What a run logs and answers: the report without the (long) list of segment names.
#[derive(Debug, Serialize)]
pub struct Summary<'a> {
    pub streams: u64,
    pub streams_archived: u64,
    pub events_archived: u64,
    pub segments: usize,
    pub bytes: u64,
    pub events_expiring: u64,
    pub refused: &'a [chronicle_kernel::chain::ChainBreak],
    pub seconds: f64,
}

impl<'a> Summary<'a> {
    pub fn of(report: &'a ArchiveReport, seconds: f64) -> Self {
        Self {
            streams: report.streams,
            streams_archived: report.streams_archived,
            events_archived: report.events_archived,
            segments: report.segments.len(),
            bytes: report.bytes,
            events_expiring: report.events_expiring,
            refused: &report.refused,
            seconds,
        }
    }
}

/// One archiver run over the whole events table ([`archive_with`] the app's adapters).
pub async fn archive(app: &App, settings: &ArchiverSettings) -> Result<ArchiveReport, StoreError> {
    archive_with(&*app.events, &*app.snapshots, &*app.archive, settings).await
}

/// One archiver run over any hot store whose copies can expire.
pub async fn archive_with<E, S>(
    events: &E,
    snapshots: &S,
    archive: &dyn Archive,
    settings: &ArchiverSettings,
) -> Result<ArchiveReport, StoreError>
where
    E: EventStore + StreamListing + Expiry + ?Sized,
    S: SnapshotStore + ?Sized,
{
    let mut opts = ArchiverOptions::new(ArchivePolicy {
        older_than: Some(settings.archive_after),
        below_snapshot: settings.below_snapshot,
    });
    opts.expire_after = settings.expire_after;
    let progress = |streams: u64| tracing::debug!(streams, "archiver progress");
    let report = run_archiver_expiring(events, snapshots, archive, &opts, progress).await?;
    for b in &report.refused {
        tracing::warn!(aggregate_type = %b.aggregate_type, aggregate_id = %b.aggregate_id, version = b.version, problem = %b.problem, "stream not archived: its stored chain does not verify");
    }
    Ok(report)
}

/// The scheduled invocation: runs [`archive`], logs and answers the summary as JSON. A failed
/// run is an error (the function's Errors alarm); what it stored before failing stays valid.
pub async fn handle(
    app: &App,
    settings: &ArchiverSettings,
) -> Result<serde_json::Value, StoreError> {
    handle_with(&*app.events, &*app.snapshots, &*app.archive, settings).await
}

/// [`handle`] over any ports.
pub async fn handle_with<E, S>(
    events: &E,
    snapshots: &S,
    archive: &dyn Archive,
    settings: &ArchiverSettings,
) -> Result<serde_json::Value, StoreError>
where
    E: EventStore + StreamListing + Expiry + ?Sized,
    S: SnapshotStore + ?Sized,
{
    let started = std::time::Instant::now();
    let report = archive_with(events, snapshots, archive, settings).await?;
    let summary = Summary::of(&report, started.elapsed().as_secs_f64());
    let json = serde_json::to_value(&summary).map_err(|e| StoreError::Invalid(e.to_string()))?;
    tracing::info!(summary = %json, "archiver run done");
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<ArchiverSettings, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ArchiverSettings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_and_durations() {
        assert_eq!(from(&[]).unwrap(), ArchiverSettings::default());
        let s = from(&[
            ("CHRONICLE_ARCHIVE_AFTER", "90d"),
            ("CHRONICLE_ARCHIVE_BELOW_SNAPSHOT", "false"),
            ("CHRONICLE_EXPIRE_AFTER", "7d 12h"),
        ])
        .unwrap();
        assert_eq!(s.archive_after, chrono::Duration::days(90));
        assert!(!s.below_snapshot);
        assert_eq!(
            s.expire_after,
            Some(chrono::Duration::days(7) + chrono::Duration::hours(12))
        );
        for off in ["", "off", "OFF"] {
            assert_eq!(
                from(&[("CHRONICLE_EXPIRE_AFTER", off)])
                    .unwrap()
                    .expire_after,
                None
            );
        }
        assert_eq!(
            from(&[("CHRONICLE_ARCHIVE_AFTER", "0s")])
                .unwrap()
                .archive_after,
            chrono::Duration::zero()
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value) in [
            ("CHRONICLE_ARCHIVE_AFTER", "a month"),
            ("CHRONICLE_EXPIRE_AFTER", "-1d"),
            ("CHRONICLE_ARCHIVE_BELOW_SNAPSHOT", "maybe"),
        ] {
            let e = from(&[(var, value)]).unwrap_err();
            assert_eq!(e.name, var);
            assert!(e.problem.contains(value), "{}", e.problem);
        }
    }
}
