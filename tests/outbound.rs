//! A reaction calling out through a port: the sample orders domain plus a reaction that tells a
//! customer's webhook (a real HTTP server on loopback) when an order is confirmed. The call is
//! made at least once, always under the same key (which the service deduplicates on); a failing
//! service is retried until it answers, a refusal is counted and not retried, and a port the
//! deployment did not register stops the reaction, named, until it is.

use async_trait::async_trait;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use chronicle_embedded::EmbeddedStore;
use chronicle_kernel::reaction::{decode, ReactionRunner, ReactionStep};
use chronicle_kernel::{
    Chronicle, CommandOptions, Dispatch, Domain, EventEnvelope, EventFeed, HandlerConfig, Outbound,
    OutboundError, Reaction,
};
use chronicle_orders::{Order, OrderEvent};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

/// Tells the customer's webhook about each confirmed order.
struct Notify;

impl Reaction for Notify {
    type State = ();
    const NAME: &'static str = "notify_customer";

    fn subscriptions(&self) -> Vec<(&'static str, &'static str)> {
        vec![("orders", "OrderConfirmed")]
    }

    fn react(&self, _: &mut (), event: &EventEnvelope) -> Result<Vec<Dispatch>, String> {
        match decode::<Order>(event)? {
            OrderEvent::Confirmed => Ok(vec![Dispatch::call(
                "customer_webhook",
                &json!({"order": event.aggregate_id, "status": "confirmed"}),
            )]),
            _ => Ok(vec![]),
        }
    }
}

/// The webhook's side: what it was sent, and how it answers the next calls.
#[derive(Default)]
struct Receiver {
    /// (Idempotency-Key, body) of every call that reached it.
    calls: Vec<(String, Value)>,
    /// Answers for the next calls, in order; 204 once they are used up.
    answers: Vec<StatusCode>,
}

type Shared = Arc<Mutex<Receiver>>;

async fn webhook(State(r): State<Shared>, headers: HeaderMap, body: String) -> StatusCode {
    let mut r = r.lock().expect("the receiver");
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    r.calls
        .push((key, serde_json::from_str(&body).unwrap_or(Value::Null)));
    if r.answers.is_empty() {
        StatusCode::NO_CONTENT
    } else {
        r.answers.remove(0)
    }
}

/// The adapter a team writes: an HTTP POST of the payload, the key as its Idempotency-Key.
struct Webhook {
    url: String,
    client: reqwest::Client,
}

#[async_trait]
impl Outbound for Webhook {
    async fn call(&self, key: &str, payload: &Value) -> Result<(), OutboundError> {
        let r = self
            .client
            .post(&self.url)
            .header("idempotency-key", key)
            .body(payload.to_string())
            .send()
            .await
            .map_err(|e| OutboundError::Failed(e.to_string()))?;
        match r.status() {
            s if s.is_success() => Ok(()),
            s if s.is_client_error() => Err(OutboundError::Refused(format!("HTTP {s}"))),
            s => Err(OutboundError::Failed(format!("HTTP {s}"))),
        }
    }
}

async fn receiver() -> (String, Shared) {
    let shared: Shared = Arc::default();
    let app = axum::Router::new()
        .route("/hook", post(webhook))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let url = format!("http://{}/hook", listener.local_addr().expect("an address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, shared)
}

struct World {
    _dir: tempfile::TempDir,
    store: Arc<EmbeddedStore>,
    chronicle: Chronicle,
}

fn world(port: Option<&str>) -> World {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = EmbeddedStore::open(dir.path()).expect("the store");
    let mut domain: Domain = chronicle_orders::domain().reaction(Notify);
    if let Some(url) = port {
        domain = domain.outbound(
            "customer_webhook",
            Webhook {
                url: url.to_owned(),
                client: reqwest::Client::new(),
            },
        );
    }
    let chronicle = Chronicle::builder(
        store.clone(),
        store.clone(),
        store.clone(),
        store.clone(),
        HandlerConfig::default(),
    )
    .domain(domain)
    .build();
    World {
        _dir: dir,
        store,
        chronicle,
    }
}

impl World {
    async fn run(&self, t: &str, id: &str, command: Value) {
        use chronicle_kernel::reaction::CommandBus;
        self.chronicle
            .dispatch(
                t,
                id,
                command.to_string().as_bytes(),
                CommandOptions::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{t}/{id}: {e}"));
    }

    fn runner(&self, name: &str) -> ReactionRunner {
        let mut r = self.chronicle.reaction_runner(name).expect("a runner");
        r.batch_size = 1000;
        r
    }

    /// Steps every reaction until none reads anything new; the first error, if any.
    async fn settle(&self) -> Result<(), String> {
        loop {
            let mut read = 0;
            for name in ["order_fulfilment", Notify::NAME] {
                read += self
                    .runner(name)
                    .step()
                    .await
                    .map_err(|e| e.to_string())?
                    .read;
            }
            if read == 0 {
                return Ok(());
            }
        }
    }

    /// A confirmed order `id`.
    async fn confirmed(&self, id: &str) {
        self.run(
            "inventory",
            "sku-a",
            json!({"type": "Restock", "quantity": 5}),
        )
        .await;
        self.run(
            "orders",
            id,
            json!({"type": "Place", "customer": "c-1", "lines": [{"sku": "sku-a", "quantity": 1}]}),
        )
        .await;
    }

    async fn status(&self) -> Value {
        let all = self.chronicle.reaction_statuses().await.expect("statuses");
        let notify = all
            .into_iter()
            .find(|s| s.name == Notify::NAME)
            .expect("registered");
        serde_json::to_value(notify).expect("JSON")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_order_is_called_out_under_one_key_however_often_delivered() {
    let (url, receiver) = receiver().await;
    let w = world(Some(&url));
    w.confirmed("o-1").await;
    w.settle().await.expect("settled");
    // The confirmation delivered twice more (a retried batch, a restart before the checkpoint).
    let confirmed = w
        .store
        .read_feed(0, 100)
        .await
        .expect("the feed")
        .into_iter()
        .find(|fe| fe.event.event_type == "OrderConfirmed")
        .expect("the order was confirmed")
        .event;
    let notify = w
        .chronicle
        .reactions()
        .iter()
        .find(|r| r.name() == Notify::NAME)
        .expect("registered")
        .clone();
    let step = ReactionStep {
        reaction: notify.as_ref(),
        read_models: w.store.as_ref(),
        commands: &w.chronicle,
    };
    for _ in 0..2 {
        step.handle(&confirmed).await.expect("handled");
    }
    // At least once: the service saw the call each time, always under one key, which is what
    // it deduplicates on (a reaction without instance state remembers nothing itself).
    let calls = receiver.lock().expect("the receiver").calls.clone();
    assert_eq!(calls.len(), 3, "{calls:?}");
    let (key, body) = &calls[0];
    assert!(key.starts_with("notify_customer:"), "{key}");
    assert!(
        calls.iter().all(|(k, b)| k == key && b == body),
        "{calls:?}"
    );
    assert_eq!(body, &json!({"order": "o-1", "status": "confirmed"}));
    // Another order's call has a key of its own.
    w.confirmed("o-2").await;
    w.settle().await.expect("settled");
    let calls = receiver.lock().expect("the receiver").calls.clone();
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert_ne!(&calls[3].0, key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_service_is_called_again_with_the_same_key_until_it_answers() {
    let (url, receiver) = receiver().await;
    receiver.lock().expect("the receiver").answers =
        vec![StatusCode::SERVICE_UNAVAILABLE, StatusCode::BAD_GATEWAY];
    let w = world(Some(&url));
    w.confirmed("o-1").await;
    for attempt in 0..2 {
        let err = w.settle().await.expect_err("the service is down");
        assert!(err.contains("customer_webhook"), "attempt {attempt}: {err}");
    }
    w.settle().await.expect("the service is back");
    let calls = receiver.lock().expect("the receiver").calls.clone();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(
        calls.iter().all(|(k, _)| *k == calls[0].0),
        "every attempt carries the same key: {calls:?}"
    );
    assert_eq!(w.status().await["refused"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_call_is_counted_and_not_retried() {
    let (url, receiver) = receiver().await;
    receiver.lock().expect("the receiver").answers = vec![StatusCode::UNPROCESSABLE_ENTITY];
    let w = world(Some(&url));
    w.confirmed("o-1").await;
    w.settle().await.expect("a refusal is an answer");
    w.settle().await.expect("settled");
    assert_eq!(receiver.lock().expect("the receiver").calls.len(), 1);
    let status = w.status().await;
    assert_eq!(status["refused"], 1, "{status}");
    assert_eq!(status["last_refused"]["code"], "call_refused", "{status}");
    assert_eq!(status["last_refused"]["target"], "port/customer_webhook");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_nobody_registered_stops_the_reaction_named() {
    let w = world(None);
    w.confirmed("o-1").await;
    let err = w.settle().await.expect_err("no port");
    assert!(err.contains("no outbound port `customer_webhook`"), "{err}");
    // The order itself went through; only the call waits.
    let order = w
        .chronicle
        .aggregate("orders")
        .expect("orders")
        .state("o-1", None)
        .await
        .expect("the order");
    assert_eq!(order.body["status"], "confirmed");
}
