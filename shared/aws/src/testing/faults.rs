//! Faults between the SDK clients and the endpoint, for tests: an HTTP client that wraps the
//! real one and, for the requests a [`Rule`] matches, either answers in the endpoint's place
//! (throttling, S3's `SlowDown`: the endpoint never sees the request), or sends the request
//! on and then loses the answer (a 500, a timeout, no answer at all: the endpoint did the
//! work), or lets only part of a Kinesis `PutRecords` through and reports the rest failed.
//!
//! Deterministic: a rule fires on the first `n` requests it matches, or on every `k`-th, and
//! counts what it injected, so a test can say how many faults it met and fail if one never
//! fired. Clients made with [`Faults::clients`] use it; everything else about them (region,
//! credentials, endpoint, retry and timeouts) is the base configuration's.

use crate::Clients;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::byte_stream::ByteStream;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Which requests a rule is about.
#[derive(Clone, Debug)]
pub enum Matcher {
    /// DynamoDB operations (`PutItem`, `TransactWriteItems`, ...), on one table if given,
    /// whose request body contains `body` if given (e.g. `"event_id":{` for event items).
    DynamoDb {
        ops: Vec<&'static str>,
        table: Option<String>,
        body: Option<String>,
    },
    /// Kinesis operations (`PutRecords`, ...).
    Kinesis { ops: Vec<&'static str> },
    /// S3 requests with this method whose URL contains each of `url_contains` (path-style:
    /// `/{bucket}/{key}`, `/{bucket}/?list-type=2&prefix=...`).
    S3 {
        method: &'static str,
        url_contains: Vec<String>,
    },
}

impl Matcher {
    pub fn dynamodb(ops: &[&'static str]) -> Self {
        Self::DynamoDb {
            ops: ops.to_vec(),
            table: None,
            body: None,
        }
    }

    pub fn dynamodb_on(table: &str, ops: &[&'static str]) -> Self {
        Self::DynamoDb {
            ops: ops.to_vec(),
            table: Some(table.to_owned()),
            body: None,
        }
    }

    /// DynamoDB operations whose request body contains `needle`.
    pub fn dynamodb_containing(ops: &[&'static str], needle: &str) -> Self {
        Self::DynamoDb {
            ops: ops.to_vec(),
            table: None,
            body: Some(needle.to_owned()),
        }
    }

    pub fn kinesis(ops: &[&'static str]) -> Self {
        Self::Kinesis { ops: ops.to_vec() }
    }

    pub fn s3(method: &'static str, url_contains: &[&str]) -> Self {
        Self::S3 {
            method,
            url_contains: url_contains.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    fn matches(&self, r: &HttpRequest) -> bool {
        // JSON protocols name the operation in `X-Amz-Target`: `DynamoDB_20120810.PutItem`.
        let target = r.headers().get("x-amz-target");
        let op = |prefix: &str| {
            target
                .and_then(|t| t.split_once('.'))
                .filter(|(service, _)| *service == prefix)
                .map(|(_, op)| op)
        };
        match self {
            Self::DynamoDb { ops, table, body } => {
                let has = |needle: &str| {
                    r.body()
                        .bytes()
                        .and_then(|b| std::str::from_utf8(b).ok())
                        .is_some_and(|text| text.contains(needle))
                };
                op("DynamoDB_20120810").is_some_and(|o| ops.contains(&o))
                    && table
                        .as_ref()
                        .is_none_or(|t| has(&format!("\"TableName\":\"{t}\"")))
                    && body.as_ref().is_none_or(|b| has(b))
            }
            Self::Kinesis { ops } => op("Kinesis_20131202").is_some_and(|o| ops.contains(&o)),
            Self::S3 {
                method,
                url_contains,
            } => {
                target.is_none()
                    && r.method() == *method
                    && url_contains.iter().all(|p| r.uri().contains(p.as_str()))
            }
        }
    }
}

/// What happens to a matched request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answered in the endpoint's place with this status and error code (a JSON `__type`
    /// for DynamoDB and Kinesis, S3's XML `<Code>`); the endpoint never sees the request.
    Refuse { status: u16, code: &'static str },
    /// Sent on and answered; the caller gets a 500 instead of the answer.
    LoseAnswer500,
    /// Sent on and answered; the caller gets a timeout instead (what an attempt timeout or
    /// a dropped connection looks like to the SDK).
    LoseAnswerTimeout,
    /// Sent on; the answer never comes, so only the client's attempt timeout ends the wait.
    LoseAnswerHang,
    /// `PutRecords`: every other record (the only one, if it is alone) is kept back and
    /// answered as failed with `ProvisionedThroughputExceededException`; the rest are sent on,
    /// and the answer lists both, with `FailedRecordCount`.
    PartialPutRecords,
}

impl Fault {
    /// DynamoDB's (and Kinesis's) `ProvisionedThroughputExceededException` (HTTP 400).
    pub const PROVISIONED_THROUGHPUT: Fault = Fault::Refuse {
        status: 400,
        code: "ProvisionedThroughputExceededException",
    };
    /// DynamoDB's `ThrottlingException` (HTTP 400).
    pub const THROTTLING: Fault = Fault::Refuse {
        status: 400,
        code: "ThrottlingException",
    };
    /// S3's `SlowDown` (HTTP 503).
    pub const SLOW_DOWN: Fault = Fault::Refuse {
        status: 503,
        code: "SlowDown",
    };
}

/// Which of the requests a rule matches it fires on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// The first `n`.
    First(u64),
    /// The `k`-th, `2k`-th, ..., at most `times` of them.
    Every { k: u64, times: u64 },
}

#[derive(Clone, Debug)]
pub struct Rule {
    /// How the test and its report name this fault.
    pub label: &'static str,
    pub matcher: Matcher,
    pub fault: Fault,
    pub schedule: Schedule,
}

impl Rule {
    pub fn new(label: &'static str, matcher: Matcher, fault: Fault, schedule: Schedule) -> Self {
        Self {
            label,
            matcher,
            fault,
            schedule,
        }
    }
}

#[derive(Debug)]
struct State {
    rule: Rule,
    matched: u64,
    injected: u64,
}

/// A set of rules and what they have done so far; shared by every client made from it.
#[derive(Debug)]
pub struct Faults {
    rules: Mutex<Vec<State>>,
    armed: AtomicBool,
}

impl Faults {
    pub fn new(rules: Vec<Rule>) -> Arc<Self> {
        Arc::new(Self {
            rules: Mutex::new(
                rules
                    .into_iter()
                    .map(|rule| State {
                        rule,
                        matched: 0,
                        injected: 0,
                    })
                    .collect(),
            ),
            armed: AtomicBool::new(true),
        })
    }

    /// SDK clients like [`Clients::new`]'s from `base`, with every request going through the
    /// rules.
    pub fn clients(self: &Arc<Self>, base: &aws_config::SdkConfig) -> Clients {
        let sdk = base.to_builder().http_client(self.http_client()).build();
        Clients::new(sdk)
    }

    /// The HTTP client: the SDK's default one (rustls), behind the rules.
    pub fn http_client(self: &Arc<Self>) -> SharedHttpClient {
        let inner = crate::config::https_client();
        SharedHttpClient::new(FaultClient {
            inner,
            faults: self.clone(),
        })
    }

    /// No more faults from now on (counts stay).
    pub fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<State>> {
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fault for this request, if a rule fires on it. Rules are asked in order; each sees
    /// (and counts) only the requests the rules before it let through.
    fn decide(&self, request: &HttpRequest) -> Option<Fault> {
        if !self.armed.load(Ordering::SeqCst) {
            return None;
        }
        for state in self
            .lock()
            .iter_mut()
            .filter(|s| s.rule.matcher.matches(request))
        {
            state.matched += 1;
            let fire = match state.rule.schedule {
                Schedule::First(n) => state.matched <= n,
                Schedule::Every { k, times } => {
                    k > 0 && state.matched.is_multiple_of(k) && state.injected < times
                }
            };
            if fire {
                state.injected += 1;
                return Some(state.rule.fault);
            }
        }
        None
    }

    /// How many faults the rule labelled `label` injected.
    pub fn injected(&self, label: &str) -> u64 {
        self.lock()
            .iter()
            .filter(|s| s.rule.label == label)
            .map(|s| s.injected)
            .sum()
    }

    /// (label, requests matched, faults injected) per rule.
    pub fn counts(&self) -> Vec<(&'static str, u64, u64)> {
        self.lock()
            .iter()
            .map(|s| (s.rule.label, s.matched, s.injected))
            .collect()
    }

    /// One line per rule: what it matched and injected.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for (label, matched, injected) in self.counts() {
            let _ = writeln!(
                out,
                "  {label}: {injected} injected ({matched} requests matched)"
            );
        }
        out
    }

    /// Panics naming every rule that never fired: a test whose faults never happened proves
    /// nothing.
    pub fn assert_each_injected(&self) {
        let idle: Vec<&str> = self
            .counts()
            .into_iter()
            .filter(|(_, _, injected)| *injected == 0)
            .map(|(label, _, _)| label)
            .collect();
        assert!(
            idle.is_empty(),
            "faults never injected: {idle:?}\n{}",
            self.report()
        );
    }
}

#[derive(Debug)]
struct FaultClient {
    inner: SharedHttpClient,
    faults: Arc<Faults>,
}

impl HttpClient for FaultClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(FaultConnector {
            inner: self.inner.http_connector(settings, components),
            faults: self.faults.clone(),
        })
    }
}

#[derive(Debug)]
struct FaultConnector {
    inner: SharedHttpConnector,
    faults: Arc<Faults>,
}

impl HttpConnector for FaultConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let fault = self.faults.decide(&request);
        let inner = self.inner.clone();
        HttpConnectorFuture::new(async move {
            let Some(fault) = fault else {
                return inner.call(request).await;
            };
            let json = request.headers().get("x-amz-target").is_some();
            let content_type = request
                .headers()
                .get("content-type")
                .unwrap_or("application/x-amz-json-1.0")
                .to_owned();
            let error = |status: u16, code: &str, message: &str| {
                if json {
                    let body = json!({ "__type": code, "message": message }).to_string();
                    respond(status, &content_type, body.into_bytes())
                } else {
                    let body = format!(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><RequestId>fault</RequestId></Error>"
                    );
                    respond(status, "application/xml", body.into_bytes())
                }
            };
            match fault {
                Fault::Refuse { status, code } => Ok(error(status, code, "injected fault")),
                Fault::LoseAnswer500 => {
                    let answer = inner.call(request).await?;
                    drain(answer).await;
                    let code = if json {
                        "InternalServerError"
                    } else {
                        "InternalError"
                    };
                    Ok(error(500, code, "injected fault: the answer was lost"))
                }
                Fault::LoseAnswerTimeout => {
                    let answer = inner.call(request).await?;
                    drain(answer).await;
                    Err(ConnectorError::timeout(
                        "injected fault: the answer was lost (timed out)".into(),
                    ))
                }
                Fault::LoseAnswerHang => {
                    let answer = inner.call(request).await?;
                    drain(answer).await;
                    std::future::pending().await
                }
                Fault::PartialPutRecords => {
                    partial_put_records(inner, request, &content_type).await
                }
            }
        })
    }
}

fn respond(status: u16, content_type: &str, body: Vec<u8>) -> HttpResponse {
    let status = StatusCode::try_from(status)
        .unwrap_or_else(|_| StatusCode::try_from(500).expect("500 is a status code"));
    let mut r = HttpResponse::new(status, SdkBody::from(body));
    r.headers_mut()
        .insert("content-type", content_type.to_owned());
    r
}

/// Reads an answer whole, so the endpoint has finished with the request before it is dropped.
async fn drain(answer: HttpResponse) {
    let _ = ByteStream::new(answer.into_body()).collect().await;
}

fn broken(what: &str) -> ConnectorError {
    ConnectorError::other(format!("fault injector: {what}").into(), None)
}

/// Sends on the records that are let through and answers for all of them, as Kinesis does
/// when some records of a `PutRecords` are throttled.
async fn partial_put_records(
    inner: SharedHttpConnector,
    mut request: HttpRequest,
    content_type: &str,
) -> Result<HttpResponse, ConnectorError> {
    let mut body: Value = request
        .body()
        .bytes()
        .and_then(|b| serde_json::from_slice(b).ok())
        .ok_or_else(|| broken("PutRecords body is not JSON in memory"))?;
    let records = body["Records"].as_array().cloned().unwrap_or_default();
    let n = records.len();
    let held: Vec<bool> = (0..n).map(|i| n == 1 || i % 2 == 1).collect();
    let through: Vec<Value> = records
        .into_iter()
        .zip(&held)
        .filter(|(_, h)| !**h)
        .map(|(r, _)| r)
        .collect();
    let mut accepted: Vec<Value> = Vec::new();
    let mut failed_upstream = 0;
    if !through.is_empty() {
        body["Records"] = Value::Array(through);
        let bytes = serde_json::to_vec(&body).map_err(|e| broken(&e.to_string()))?;
        request
            .headers_mut()
            .insert("content-length", bytes.len().to_string());
        *request.body_mut() = SdkBody::from(bytes);
        let answer = inner.call(request).await?;
        if !answer.status().is_success() {
            return Ok(answer); // the endpoint's own refusal, as it is
        }
        let bytes = ByteStream::new(answer.into_body())
            .collect()
            .await
            .map_err(|e| broken(&e.to_string()))?
            .into_bytes();
        let out: Value = serde_json::from_slice(&bytes).map_err(|e| broken(&e.to_string()))?;
        failed_upstream = out["FailedRecordCount"].as_u64().unwrap_or(0);
        accepted = out["Records"].as_array().cloned().unwrap_or_default();
    }
    let mut accepted = accepted.into_iter();
    let mut results = Vec::with_capacity(n);
    for h in &held {
        if *h {
            results.push(json!({
                "ErrorCode": "ProvisionedThroughputExceededException",
                "ErrorMessage": "Rate exceeded for shard (injected fault)",
            }));
        } else {
            results.push(
                accepted
                    .next()
                    .ok_or_else(|| broken("the endpoint answered for fewer records"))?,
            );
        }
    }
    let failed = held.iter().filter(|h| **h).count() as u64 + failed_upstream;
    let answer = json!({ "FailedRecordCount": failed, "Records": results });
    Ok(respond(200, content_type, answer.to_string().into_bytes()))
}
