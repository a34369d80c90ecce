//! Chronicle's HTTP API as one axum `Router`. The local server serves it directly; the Lambda
//! functions serve the same router through `lambda_http`, so status codes and JSON match.
//!
//! Every route is generic over the registered aggregate types: `/{type}/{id}/commands`,
//! `/{type}/{id}`, `/{type}/{id}/events` and `/{type}?field=value`; `/audit/events` is the
//! global audit feed across them (a static route: it wins over `/{type}/{id}`, and the kernel
//! refuses to register an aggregate type named `audit`); `/openapi.json` describes them all
//! ([`openapi`]).

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chronicle_kernel::audit::{
    audit_page, history_page, AuditQuery, HistoryQuery, AUDIT_DEFAULT_LIMIT,
};
use chronicle_kernel::{validate_id, AggregateService, Chronicle, CommandOptions, Error};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub mod openapi;

/// Largest accepted request body: a command and its events must fit a DynamoDB item (400 KB).
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Default and largest page of `GET /{type}/{id}/events`.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;
/// Largest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;
/// `Retry-After` (seconds) on every 503: the SDK has already retried with backoff by then, so
/// a throttled or failed store is worth one more try from the client a moment later.
pub const RETRY_AFTER_SECS: u64 = 1;

/// Which routes a router serves: the local server serves all; on AWS the command function
/// serves the commands and the read-only query function the reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routes {
    All,
    Commands,
    Reads,
}

/// Builds the full API over a registry of aggregates.
pub fn router(chronicle: Chronicle) -> Router {
    router_for(chronicle, Routes::All)
}

/// Builds the API with only the given routes (and `/health`); the others answer 404.
pub fn router_for(chronicle: Chronicle, routes: Routes) -> Router {
    // Built once: the registration doesn't change while the router serves.
    let doc = Arc::new(openapi::document(&chronicle, routes));
    let mut r = Router::new().route("/health", get(health)).route(
        "/openapi.json",
        get(move |RawQuery(raw): RawQuery| {
            let doc = doc.clone();
            async move {
                query_params(raw, &[])?;
                Ok::<_, ApiError>(Json(doc.as_ref().clone()))
            }
        }),
    );
    if routes != Routes::Commands {
        r = r
            .route("/{aggregate_type}", get(list))
            .route("/{aggregate_type}/{id}", get(state))
            .route("/{aggregate_type}/{id}/events", get(history))
            .route("/audit/events", get(audit));
    }
    if routes != Routes::Reads {
        r = r.route("/{aggregate_type}/{id}/commands", post(command));
    }
    if routes == Routes::All {
        // Operators' routes, on the local server only: a rebuild runs as a background task,
        // which a Lambda invocation can't host.
        r = r
            .route("/admin/projections", get(admin_projections))
            .route("/admin/projections/{name}/rebuild", post(admin_rebuild))
            .route("/admin/reactions", get(admin_reactions))
            .route("/admin/subjects/{subject}/forget", post(admin_forget));
    }
    r.fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // One span per request (method, path); responses with status and latency at DEBUG:
        // `RUST_LOG=tower_http=debug` turns them on.
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(chronicle)
}

/// An error as the API reports it: `{"error":{"code","message",...}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub extra: Vec<(&'static str, Value)>,
    /// Ask the client to close the connection (the request body was left unread).
    pub close: bool,
    /// `Retry-After` in seconds (set on 503s).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            extra: Vec::new(),
            close: false,
            retry_after: None,
        }
    }
    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::InvalidInput { .. } => StatusCode::BAD_REQUEST,
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::Conflict { .. } => StatusCode::CONFLICT,
            Error::IdempotencyKeyReused { .. } | Error::Rejected { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Error::Schema(_) | Error::Decode(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::Store(
                chronicle_kernel::StoreError::Invalid(_) | chronicle_kernel::StoreError::Corrupt(_),
            ) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        if matches!(
            e,
            Error::Store(chronicle_kernel::StoreError::Unavailable(_))
        ) {
            // Throttling is load, not a fault: the client is told when to come back.
            tracing::warn!(error = %e, code = e.code(), "request refused: the store is busy");
        } else if status.is_server_error() {
            tracing::error!(error = %e, code = e.code(), "request failed");
        }
        let mut api = ApiError::new(status, e.code(), e.to_string());
        if status == StatusCode::SERVICE_UNAVAILABLE {
            api.retry_after = Some(RETRY_AFTER_SECS);
        }
        if let Error::Conflict {
            expected, actual, ..
        } = e
        {
            api.extra = vec![
                ("expected_version", json!(expected)),
                ("actual_version", json!(actual)),
            ];
        }
        api
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = serde_json::Map::new();
        error.insert("code".into(), json!(self.code));
        error.insert("message".into(), json!(self.message));
        for (k, v) in self.extra {
            error.insert(k.into(), v);
        }
        let mut resp = (self.status, Json(json!({ "error": error }))).into_response();
        if self.close {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

type ApiResult = Result<Response, ApiError>;

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /admin/projections`: every projection's state, checkpoint, lag and last rebuild.
async fn admin_projections(
    State(chronicle): State<Chronicle>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    query_params(raw, &[])?;
    let statuses = chronicle.projection_statuses().await?;
    Ok(Json(json!({ "projections": statuses })).into_response())
}

/// `GET /admin/reactions`: every reaction's state, checkpoint, lag and refused commands.
async fn admin_reactions(State(chronicle): State<Chronicle>, RawQuery(raw): RawQuery) -> ApiResult {
    query_params(raw, &[])?;
    let statuses = chronicle.reaction_statuses().await?;
    Ok(Json(json!({ "reactions": statuses })).into_response())
}

/// `POST /admin/subjects/{subject}/forget`: destroys the data subject's key and records the
/// erasure ([`Chronicle::forget`]); repeating it answers the same.
async fn admin_forget(
    State(chronicle): State<Chronicle>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let checked = path_params(path).and_then(|s| {
        query_params(raw, &[])?;
        Ok(s)
    });
    let subject = match checked {
        Ok(s) => s,
        Err(e) => return Err(e.after_discarding(&headers, body).await),
    };
    // No body is needed; one that is sent is read and dropped (within the usual limit).
    read_body(&headers, body).await?;
    let forgotten = chronicle.forget(&subject).await?;
    Ok(Json(forgotten).into_response())
}

/// An answer about to leave, its personal fields opened (or shown erased).
async fn revealed(chronicle: &Chronicle, mut body: Value) -> Result<Json<Value>, ApiError> {
    chronicle.reveal(&mut body).await?;
    Ok(Json(body))
}

/// `POST /admin/projections/{name}/rebuild`: starts (or resumes) a rebuild in the background;
/// `GET /admin/projections` shows its progress.
async fn admin_rebuild(
    State(chronicle): State<Chronicle>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    query_params(raw, &[])?;
    let name = path_params(path)?;
    match chronicle.start_rebuild(&name) {
        Ok(_) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({
                "projection": name,
                "state": "rebuilding",
                "status": "/admin/projections",
            })),
        )
            .into_response()),
        Err(e @ chronicle_kernel::StartRebuildError::Unknown(_)) => {
            let known: Vec<&str> = chronicle.projections().iter().map(|p| p.name()).collect();
            Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_projection",
                format!("{e}; known: {}", known.join(", ")),
            ))
        }
        Err(e @ chronicle_kernel::StartRebuildError::Running(_)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "rebuild_in_progress",
            e.to_string(),
        )),
        Err(e @ chronicle_kernel::StartRebuildError::NoFeed) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "rebuild_unavailable",
            e.to_string(),
        )),
    }
}

async fn route_not_found(headers: HeaderMap, body: Body) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "route_not_found", "no such route")
        .after_discarding(&headers, body)
        .await
}

async fn method_not_allowed(headers: HeaderMap, body: Body) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
    .after_discarding(&headers, body)
    .await
}

/// Path segments, or a JSON 400 (e.g. a percent-escape that is not UTF-8).
fn path_params<T>(path: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    path.map(|Path(t)| t)
        .map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))
}

/// `/{aggregate_type}/{id}/...`: the registered aggregate and a valid id, or the API error.
fn aggregate_route(
    chronicle: &Chronicle,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<(Arc<dyn AggregateService>, String), ApiError> {
    let (aggregate_type, id) = path_params(path)?;
    let svc = service(chronicle, &aggregate_type)?.clone();
    validate_id(&id)?;
    Ok((svc, id))
}

fn service<'a>(
    chronicle: &'a Chronicle,
    aggregate_type: &str,
) -> Result<&'a Arc<dyn AggregateService>, ApiError> {
    chronicle.aggregate(aggregate_type).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_aggregate_type",
            format!(
                "no aggregate type `{aggregate_type}`; known: {}",
                chronicle.aggregate_types().collect::<Vec<_>>().join(", ")
            ),
        )
    })
}

/// Query parameters, refusing any the route doesn't know (a typo should not be ignored).
fn query_params(
    raw: Option<String>,
    allowed: &[&str],
) -> Result<BTreeMap<String, String>, ApiError> {
    let raw = raw.unwrap_or_default();
    let pairs: Vec<(String, String)> = serde_urlencoded_pairs(&raw)?;
    let mut out = BTreeMap::new();
    for (k, v) in pairs {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!(
                    "unknown query parameter `{k}`; this route takes: {}",
                    allowed.join(", ")
                ),
            ));
        }
        if out.insert(k.clone(), v).is_some() {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("query parameter `{k}` given twice"),
            ));
        }
    }
    Ok(out)
}

fn serde_urlencoded_pairs(raw: &str) -> Result<Vec<(String, String)>, ApiError> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(
        &format!("/?{raw}")
            .parse()
            .map_err(|_| ApiError::bad_request("invalid_query", "malformed query string"))?,
    )
    .map(|q| q.0)
    .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
}

fn parse_u64(params: &BTreeMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    params
        .get(name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("`{name}` must be a non-negative integer, not {v:?}"),
                )
            })
        })
        .transpose()
}

fn parse_bool(params: &BTreeMap<String, String>, name: &str) -> Result<bool, ApiError> {
    match params.get(name).map(String::as_str) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(v) => Err(ApiError::bad_request(
            "invalid_query",
            format!("`{name}` must be true or false, not {v:?}"),
        )),
    }
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

async fn state(
    State(chronicle): State<Chronicle>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let (svc, id) = aggregate_route(&chronicle, path)?;
    let params = query_params(raw, &["consistent", "version", "at"])?;
    let mut version = parse_u64(&params, "version")?;
    let at = parse_time(&params, "at")?;
    if let Some(at) = at {
        if version.is_some() {
            return Err(ApiError::bad_request(
                "invalid_query",
                "give `version` or `at`, not both",
            ));
        }
        version = Some(chronicle_kernel::audit::version_at(svc.as_ref(), &id, at).await?);
    }
    let view = if version.is_some() || parse_bool(&params, "consistent")? {
        svc.state(&id, version).await?
    } else {
        svc.read_model(&id).await?
    };
    let mut resp = revealed(&chronicle, view.body).await?.into_response();
    resp.headers_mut().insert(header::ETAG, etag(view.version));
    Ok(resp)
}

fn parse_time(
    params: &BTreeMap<String, String>,
    name: &str,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    params
        .get(name)
        .map(|v| {
            chronicle_kernel::envelope::parse_timestamp(v).map_err(|e| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("`{name}` must be an RFC 3339 time such as 2026-11-26T12:00:00Z, not {v:?}: {e}"),
                )
            })
        })
        .transpose()
}

async fn history(
    State(chronicle): State<Chronicle>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let (svc, id) = aggregate_route(&chronicle, path)?;
    let params = query_params(
        raw,
        &[
            "from_version",
            "to_version",
            "from",
            "to",
            "event_type",
            "limit",
            "raw",
        ],
    )?;
    let limit = parse_u64(&params, "limit")?.unwrap_or(DEFAULT_PAGE as u64);
    if limit == 0 || limit > MAX_PAGE as u64 {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("`limit` must be between 1 and {MAX_PAGE}"),
        ));
    }
    let query = HistoryQuery {
        from_version: parse_u64(&params, "from_version")?.unwrap_or(1),
        to_version: parse_u64(&params, "to_version")?,
        from: parse_time(&params, "from")?,
        to: parse_time(&params, "to")?,
        event_type: params.get("event_type").cloned(),
        limit: limit as usize,
        raw: parse_bool(&params, "raw")?,
    };
    let page = history_page(svc.as_ref(), &id, &query).await?;
    let body = json!({
        "aggregate_id": id,
        "events": page.events,
        "next_from_version": page.next_from_version,
    });
    if query.raw {
        // As stored, byte for byte what the chain hashes: personal fields stay tokens.
        return Ok(Json(body).into_response());
    }
    Ok(revealed(&chronicle, body).await?.into_response())
}

/// `GET /audit/events?from=&to=[&limit=][&after=][&raw=]`: every event recorded from `from` to
/// `to` (inclusive), across aggregates, in recorded order; `next` is where the next page
/// starts (`after`), `null` on the last page.
async fn audit(State(chronicle): State<Chronicle>, RawQuery(raw): RawQuery) -> ApiResult {
    let params = query_params(raw, &["from", "to", "limit", "after", "raw"])?;
    let required = |name: &str| -> Result<DateTime<Utc>, ApiError> {
        parse_time(&params, name)?.ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!("`{name}` is required: an RFC 3339 time such as 2026-11-26T12:00:00Z"),
            )
        })
    };
    let limit = parse_u64(&params, "limit")?.map_or(AUDIT_DEFAULT_LIMIT, |l| {
        // Past usize: too large either way, as validation says.
        usize::try_from(l).unwrap_or(usize::MAX)
    });
    let query = AuditQuery {
        from: required("from")?,
        to: required("to")?,
        after: params.get("after").cloned(),
        limit,
        raw: parse_bool(&params, "raw")?,
    };
    let page = audit_page(&chronicle, &query).await?;
    let body = json!({
        "events": page.events,
        "next": page.next,
    });
    if query.raw {
        return Ok(Json(body).into_response());
    }
    Ok(revealed(&chronicle, body).await?.into_response())
}

async fn list(
    State(chronicle): State<Chronicle>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let aggregate_type = path_params(path)?;
    service(&chronicle, &aggregate_type)?;
    let raw = raw.unwrap_or_default();
    let mut params = serde_urlencoded_pairs(&raw)?;
    let limit = match params.iter().position(|(k, _)| k == "limit") {
        Some(i) => {
            let (_, v) = params.remove(i);
            v.parse::<usize>()
                .ok()
                .filter(|l| (1..=MAX_PAGE).contains(l))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_query",
                        format!("`limit` must be between 1 and {MAX_PAGE}"),
                    )
                })?
        }
        None => DEFAULT_PAGE,
    };
    let Some(list) = chronicle.list_projection(&aggregate_type) else {
        return Err(Error::not_found(
            "no_list_model",
            format!("{aggregate_type} has no list read model"),
        )
        .into());
    };
    let fields = list.indexes();
    let [(field, value)] = params.as_slice() else {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!(
                "list {aggregate_type} by exactly one field ({}), e.g. /{aggregate_type}?{}=...",
                fields.join(" or "),
                fields.first().unwrap_or(&"field")
            ),
        ));
    };
    let items = chronicle.list(&aggregate_type, field, value, limit).await?;
    Ok(revealed(&chronicle, json!({ aggregate_type: items }))
        .await?
        .into_response())
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str().map_err(|_| {
                ApiError::bad_request("invalid_header", format!("`{name}` must be visible ASCII"))
            })
        })
        .transpose()
}

fn command_options(headers: &HeaderMap) -> Result<CommandOptions, ApiError> {
    let expected_version = header_str(headers, "if-match")?
        .map(|v| {
            let t = v.trim();
            let t = t.strip_prefix("W/").unwrap_or(t).trim_matches('"');
            t.parse::<u64>().map_err(|_| {
                ApiError::bad_request(
                    "invalid_header",
                    format!("`If-Match` must be the expected version (e.g. 3 or \"3\"), not {v:?}"),
                )
            })
        })
        .transpose()?;
    let idempotency_key = header_str(headers, "idempotency-key")?
        .map(|k| {
            if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY {
                Err(ApiError::bad_request(
                    "invalid_header",
                    format!("`Idempotency-Key` must have 1 to {MAX_IDEMPOTENCY_KEY} characters"),
                ))
            } else {
                Ok(k.to_owned())
            }
        })
        .transpose()?;
    let short = |name: &str| -> Result<Option<String>, ApiError> {
        header_str(headers, name)?
            .map(|v| {
                if v.is_empty() || v.len() > 256 {
                    Err(ApiError::bad_request(
                        "invalid_header",
                        format!("`{name}` must have 1 to 256 characters"),
                    ))
                } else {
                    Ok(v.to_owned())
                }
            })
            .transpose()
    };
    Ok(CommandOptions {
        expected_version,
        idempotency_key,
        correlation_id: short("x-correlation-id")?,
        causation_id: short("x-causation-id")?,
        ..CommandOptions::default()
    })
}

/// A 413 for a body over [`MAX_BODY_BYTES`].
fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the body is over {MAX_BODY_BYTES} bytes"),
    )
}

impl ApiError {
    /// This answer to a request whose body is left unread: the body is read and dropped first
    /// (see [`discard`]); when it can't be, the answer says the connection closes.
    async fn after_discarding(mut self, headers: &HeaderMap, mut body: Body) -> Self {
        self.close = !discard(headers, &mut body).await;
        self
    }

    /// This answer after reading `read` bytes of `body`: the rest is dropped as in
    /// [`ApiError::after_discarding`].
    async fn after_draining(mut self, mut body: Body, read: u64) -> Self {
        self.close = !drain(&mut body, read).await;
        self
    }
}

/// Reads a command body of at most [`MAX_BODY_BYTES`]; over that, a 413 (after discarding
/// the rest, see [`discard`]).
async fn read_body(headers: &HeaderMap, mut body: Body) -> Result<Bytes, ApiError> {
    let declared = header_str(headers, "content-length")?.and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large().after_discarding(headers, body).await);
    }
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(frame) = next_data(&mut body).await {
        let Ok(data) = frame else {
            // The client went away or broke the framing: nobody reads the answer, so close.
            let mut e = too_large();
            e.close = true;
            return Err(e);
        };
        if let Some(data) = data {
            if bytes.len() + data.len() > MAX_BODY_BYTES {
                let read = (bytes.len() + data.len()) as u64;
                return Err(too_large().after_draining(body, read).await);
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes.into())
}

/// Reads and drops a body before an answer that doesn't need it: closing with it unread
/// resets the connection, and a client that sends its whole body before reading the answer
/// (urllib, requests, many Java clients) would see that reset, never the answer. Whether the
/// body reached its end (then the connection stays usable).
///
/// Not when the client waits for `100 Continue` (it sends nothing until told to, so the answer
/// goes at once) nor for a declared length past [`DRAIN_BYTES`] (not worth reading).
async fn discard(headers: &HeaderMap, body: &mut Body) -> bool {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if expects_continue(headers) || declared.is_some_and(|n| n > DRAIN_BYTES) {
        return false;
    }
    drain(body, 0).await
}

/// Most of a body read and discarded before an answer that doesn't use it (a 413, or a
/// refusal before the body was read), all of it counted.
pub const DRAIN_BYTES: u64 = 8 * 1024 * 1024;
/// How long discarding may take, so a slow or stalled client can't hold the task.
pub const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Reads and drops the rest of `body`, of which `read` bytes are already read: whether it
/// reached the end within [`DRAIN_BYTES`] and [`DRAIN_TIME`].
async fn drain(body: &mut Body, mut read: u64) -> bool {
    let to_end = async {
        while let Some(frame) = next_data(body).await {
            let Ok(frame) = frame else { return false };
            if let Some(data) = frame {
                read += data.len() as u64;
                if read > DRAIN_BYTES {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(DRAIN_TIME, to_end)
        .await
        .unwrap_or(false)
}

/// The body's next frame: its data, `None` for trailers; `None` at the end.
async fn next_data(body: &mut Body) -> Option<Result<Option<Bytes>, axum::Error>> {
    std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx))
        .await
        .map(|frame| frame.map(|f| f.into_data().ok()))
}

fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

async fn command(
    State(chronicle): State<Chronicle>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let checked = aggregate_route(&chronicle, path).and_then(|(svc, id)| {
        query_params(raw, &[])?;
        Ok((svc, id, command_options(&headers)?))
    });
    let (svc, id, opts) = match checked {
        Ok(checked) => checked,
        Err(e) => return Err(e.after_discarding(&headers, body).await),
    };
    let bytes = read_body(&headers, body).await?;
    let outcome = svc.execute(&id, &bytes, opts).await?;
    let result = serde_json::to_value(&outcome.result)
        .map_err(|e| Error::Decode(format!("command result: {e}")))?;
    let mut resp = revealed(&chronicle, result).await?.into_response();
    resp.headers_mut()
        .insert(header::ETAG, etag(outcome.result.version));
    if outcome.replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chronicle_kernel::StoreError;

    async fn answer(e: Error) -> (StatusCode, HeaderMap, Value) {
        let resp = ApiError::from(e).into_response();
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 16).await.expect("a body");
        (
            parts.status,
            parts.headers,
            serde_json::from_slice(&bytes).expect("JSON"),
        )
    }

    #[tokio::test]
    async fn store_failures_are_503_with_retry_after_and_a_json_error() {
        for (e, code) in [
            (StoreError::Unavailable("throttled".into()), "store_busy"),
            (StoreError::Backend("gone".into()), "store_unavailable"),
        ] {
            let (status, headers, body) = answer(Error::Store(e)).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(
                headers
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()),
                Some(RETRY_AFTER_SECS.to_string().as_str())
            );
            assert_eq!(body["error"]["code"], code, "{body}");
        }
        // Other errors don't ask for a retry.
        let (status, headers, _) = answer(Error::Store(StoreError::Corrupt("x".into()))).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(headers.get(header::RETRY_AFTER).is_none());
    }
}
