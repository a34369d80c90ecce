//! Reading history for audit and debugging: filtered, paginated history and the version an
//! aggregate was at, at a point in time. Shared by the HTTP API and the CLI, on every backend.

use crate::envelope::{format_timestamp, EventEnvelope};
use crate::error::Error;
use crate::ports::ReadRange;
use crate::service::AggregateService;
use chrono::{DateTime, Utc};

/// Events read per store call while scanning.
const SCAN_CHUNK: usize = 1000;
/// Most events one filtered page scans; past it the page ends early with a place to continue
/// from, so no request reads a whole long stream.
pub const MAX_SCAN: usize = 10_000;

/// Which events of one aggregate to return; every bound is inclusive.
#[derive(Clone, Debug, Default)]
pub struct HistoryQuery {
    pub from_version: u64,
    pub to_version: Option<u64>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub event_type: Option<String>,
    pub limit: usize,
    /// As stored, before upcasting.
    pub raw: bool,
}

impl HistoryQuery {
    fn filtering(&self) -> bool {
        self.from.is_some() || self.to.is_some() || self.event_type.is_some()
    }

    fn matches(&self, e: &EventEnvelope) -> bool {
        self.from.is_none_or(|t| e.recorded_at >= t)
            && self.to.is_none_or(|t| e.recorded_at <= t)
            && self.event_type.as_deref().is_none_or(|t| e.event_type == t)
    }

    /// Refuses contradictory bounds.
    pub fn validate(&self) -> Result<(), Error> {
        if self.from_version == 0 {
            return Err(Error::invalid(
                "invalid_query",
                "`from_version` starts at 1",
            ));
        }
        if self.to_version.is_some_and(|t| t < self.from_version) {
            return Err(Error::invalid(
                "invalid_query",
                "`to_version` must not be below `from_version`",
            ));
        }
        if let (Some(a), Some(b)) = (self.from, self.to) {
            if b < a {
                return Err(Error::invalid(
                    "invalid_query",
                    "`to` must not be before `from`",
                ));
            }
        }
        if self.event_type.as_deref() == Some("") {
            return Err(Error::invalid(
                "invalid_query",
                "`event_type` must not be empty",
            ));
        }
        if self.limit == 0 {
            return Err(Error::invalid(
                "invalid_query",
                "`limit` must be at least 1",
            ));
        }
        Ok(())
    }
}

/// A page of history: up to `limit` matching events, and where the next page starts.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryPage {
    pub events: Vec<EventEnvelope>,
    pub next_from_version: Option<u64>,
}

/// One page of `id`'s history. The next page starts at the next match (found by looking one
/// match ahead within the scan budget), or where the budget ran out. An aggregate without
/// events is `not_found`; one whose events don't match gives an empty page.
pub async fn history_page(
    svc: &dyn AggregateService,
    id: &str,
    q: &HistoryQuery,
) -> Result<HistoryPage, Error> {
    q.validate()?;
    let chunk_size = if q.filtering() {
        SCAN_CHUNK
    } else {
        q.limit + 1
    };
    let mut events = Vec::new();
    let mut next = None;
    let mut cursor = q.from_version;
    let mut scanned = 0usize;
    let mut any = false;
    'scan: loop {
        let mut range = ReadRange::from(cursor).limit(chunk_size);
        if let Some(t) = q.to_version {
            range = range.to(t);
        }
        let chunk = svc.history(id, range, q.raw).await?;
        let n = chunk.len();
        any |= n > 0;
        for e in chunk {
            scanned += 1;
            cursor = e.version + 1;
            if q.matches(&e) {
                if events.len() == q.limit {
                    next = Some(e.version);
                    break 'scan;
                }
                events.push(e);
            }
            if scanned >= MAX_SCAN {
                next = Some(cursor);
                break 'scan;
            }
        }
        if n < chunk_size || q.to_version.is_some_and(|t| cursor > t) {
            break;
        }
    }
    if !any
        && (q.from_version == 1
            || svc
                .history(id, ReadRange::all().limit(1), true)
                .await?
                .is_empty())
    {
        return Err(not_found(svc, id));
    }
    Ok(HistoryPage {
        events,
        next_from_version: next,
    })
}

fn not_found(svc: &dyn AggregateService, id: &str) -> Error {
    Error::not_found(
        "not_found",
        format!("{}/{id} does not exist", svc.aggregate_type()),
    )
}

/// The newest version of `id` recorded at or before `at`. Every event is looked at: clocks of
/// different writers may disagree, so recorded times need not grow with versions.
pub async fn version_at(
    svc: &dyn AggregateService,
    id: &str,
    at: DateTime<Utc>,
) -> Result<u64, Error> {
    let mut cursor = 1;
    let mut found = None;
    loop {
        let chunk = svc
            .history(id, ReadRange::from(cursor).limit(SCAN_CHUNK), true)
            .await?;
        let Some(last) = chunk.last() else { break };
        cursor = last.version + 1;
        for e in &chunk {
            if e.recorded_at <= at {
                found = Some(e.version);
            }
        }
        if chunk.len() < SCAN_CHUNK {
            break;
        }
    }
    if cursor == 1 {
        return Err(not_found(svc, id));
    }
    found.ok_or_else(|| {
        Error::not_found(
            "version_not_found",
            format!(
                "{}/{id} had no events at {}",
                svc.aggregate_type(),
                format_timestamp(&at)
            ),
        )
    })
}
