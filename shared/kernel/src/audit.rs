//! Reading history for audit and debugging: filtered, paginated history, the version an
//! aggregate was at, at a point in time, and the global audit feed across aggregates. Shared by
//! the HTTP API and the CLI, on every backend.

use crate::envelope::{format_timestamp, EventEnvelope};
use crate::error::Error;
use crate::ports::{ReadRange, StoreError};
use crate::service::{AggregateService, Chronicle};
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

/// Default and largest page of the audit feed.
pub const AUDIT_DEFAULT_LIMIT: usize = 100;
pub const AUDIT_MAX_LIMIT: usize = 1000;

/// The global audit feed: every event recorded from `from` to `to` (both inclusive), across
/// aggregates, in the store's recorded order ([`crate::ports::recorded_order`]).
#[derive(Clone, Debug, PartialEq)]
pub struct AuditQuery {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// A previous page's `next`.
    pub after: Option<String>,
    pub limit: usize,
    /// As stored, before upcasting.
    pub raw: bool,
}

impl AuditQuery {
    /// The first page of `from..=to`, upcast, with the default limit.
    pub fn new(from: DateTime<Utc>, to: DateTime<Utc>) -> Self {
        Self {
            from,
            to,
            after: None,
            limit: AUDIT_DEFAULT_LIMIT,
            raw: false,
        }
    }

    pub fn validate(&self) -> Result<(), Error> {
        if self.to < self.from {
            return Err(Error::invalid(
                "invalid_query",
                "`to` must not be before `from`",
            ));
        }
        if !(1..=AUDIT_MAX_LIMIT).contains(&self.limit) {
            return Err(Error::invalid(
                "invalid_query",
                format!("`limit` must be between 1 and {AUDIT_MAX_LIMIT}"),
            ));
        }
        Ok(())
    }
}

/// A page of the audit feed; `next` is `None` once the range is read to its end. A page may
/// hold fewer than `limit` events and still have a `next` (a store bounds one call's work).
#[derive(Clone, Debug, PartialEq)]
pub struct AuditPage {
    pub events: Vec<EventEnvelope>,
    pub next: Option<String>,
}

/// One page of the audit feed, upcast to each event type's current schema unless `raw`. An
/// event that can't be upcast (of an unregistered aggregate type, say) fails the page: an
/// audit never skips an event silently.
pub async fn audit_page(chronicle: &Chronicle, q: &AuditQuery) -> Result<AuditPage, Error> {
    q.validate()?;
    let after = q.after.as_deref().map(decode_cursor).transpose()?;
    let given = after.is_some();
    let page = chronicle
        .events()
        .read_recorded(q.from, q.to, after, q.limit)
        .await
        .map_err(|e| match e {
            StoreError::Invalid(m) if given => bad_cursor(&m),
            other => Error::from(other),
        })?;
    let events = if q.raw {
        page.events
    } else {
        page.events
            .into_iter()
            .map(|e| chronicle.upcast(e))
            .collect::<Result<_, _>>()?
    };
    Ok(AuditPage {
        events,
        next: page.next.as_deref().map(encode_cursor),
    })
}

/// Store cursors are JSON (quotes, brackets, `#`): hex keeps them safe in a URL unescaped.
fn encode_cursor(store_cursor: &str) -> String {
    hex::encode(store_cursor)
}

fn decode_cursor(cursor: &str) -> Result<String, Error> {
    let bytes = hex::decode(cursor).map_err(|e| bad_cursor(&e.to_string()))?;
    String::from_utf8(bytes).map_err(|e| bad_cursor(&e.to_string()))
}

fn bad_cursor(why: &str) -> Error {
    Error::invalid(
        "invalid_query",
        format!("`after` is not a `next` this feed gave: {why}"),
    )
}
