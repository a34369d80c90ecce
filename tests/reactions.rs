//! The fulfilment reaction in-process on the embedded store, where every crash point can be
//! reached on purpose: a fault budget makes the reaction's N-th store write or command fail
//! (what a kill -9 at that point leaves behind), a fresh runner takes over, and the workflow
//! still completes with no doubled reservation. Then duplicated and reordered deliveries
//! through the reaction step change nothing.

use async_trait::async_trait;
use chronicle_embedded::EmbeddedStore;
use chronicle_kernel::reaction::{CommandBus, ReactionRunner, ReactionStep};
use chronicle_kernel::{
    Chronicle, CommandOptions, CommandOutcome, Doc, DocWrite, Error, EventFeed, HandlerConfig,
    ModelRef, OutboundError, ReadModelStore, ReadRange, StoreError, StreamId,
};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// How many more store writes and commands may succeed before everything fails.
struct Budget(AtomicUsize);

impl Budget {
    fn spend(&self) -> Result<(), StoreError> {
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .map(|_| ())
            .map_err(|_| StoreError::Unavailable("crashed here (fault budget spent)".into()))
    }
    fn spent(&self) -> bool {
        self.0.load(Ordering::SeqCst) == 0
    }
}

/// The read-model store, failing once the budget is spent (its writes only: a crash loses
/// nothing a read could see).
struct FaultyModels {
    inner: Arc<EmbeddedStore>,
    budget: Arc<Budget>,
}

#[async_trait]
impl ReadModelStore for FaultyModels {
    async fn active_generation(&self, projection: &str) -> Result<u64, StoreError> {
        self.inner.active_generation(projection).await
    }
    async fn get(&self, model: &ModelRef, key: &str) -> Result<Option<Doc>, StoreError> {
        self.inner.get(model, key).await
    }
    async fn find(
        &self,
        model: &ModelRef,
        field: &str,
        value: &str,
        limit: usize,
    ) -> Result<Vec<Doc>, StoreError> {
        self.inner.find(model, field, value, limit).await
    }
    async fn apply(
        &self,
        model: &ModelRef,
        writes: Vec<DocWrite>,
        checkpoint: Option<u64>,
    ) -> Result<usize, StoreError> {
        self.budget.spend()?;
        self.inner.apply(model, writes, checkpoint).await
    }
    async fn checkpoint(&self, model: &ModelRef) -> Result<u64, StoreError> {
        self.inner.checkpoint(model).await
    }
    async fn activate(&self, projection: &str, generation: u64) -> Result<(), StoreError> {
        self.inner.activate(projection, generation).await
    }
    async fn drop_generation(&self, projection: &str, generation: u64) -> Result<(), StoreError> {
        self.inner.drop_generation(projection, generation).await
    }
}

/// The registry's commands, failing once the budget is spent.
struct FaultyBus {
    inner: Chronicle,
    budget: Arc<Budget>,
}

#[async_trait]
impl CommandBus for FaultyBus {
    async fn dispatch(
        &self,
        aggregate_type: &str,
        id: &str,
        command: &[u8],
        opts: CommandOptions,
    ) -> Result<CommandOutcome, Error> {
        self.budget.spend()?;
        self.inner.dispatch(aggregate_type, id, command, opts).await
    }

    async fn call(
        &self,
        port: &str,
        key: &str,
        payload: &Value,
    ) -> Option<Result<(), OutboundError>> {
        if let Err(e) = self.budget.spend() {
            return Some(Err(OutboundError::Failed(e.to_string())));
        }
        self.inner.call(port, key, payload).await
    }
}

struct World {
    _dir: tempfile::TempDir,
    store: Arc<EmbeddedStore>,
    chronicle: Chronicle,
}

fn world() -> World {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = EmbeddedStore::open(dir.path()).expect("the embedded store");
    let chronicle = Chronicle::builder(
        store.clone(),
        store.clone(),
        store.clone(),
        store.clone(),
        HandlerConfig::default(),
    )
    .domain(chronicle_samples::domain())
    .build();
    World {
        _dir: dir,
        store,
        chronicle,
    }
}

impl World {
    async fn run(&self, aggregate_type: &str, id: &str, command: Value) {
        self.chronicle
            .dispatch(
                aggregate_type,
                id,
                command.to_string().as_bytes(),
                CommandOptions::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{aggregate_type}/{id} {command}: {e}"));
    }

    fn runner(&self, models: Arc<dyn ReadModelStore>, bus: Arc<dyn CommandBus>) -> ReactionRunner {
        let registry = self.chronicle.clone();
        ReactionRunner::new(
            self.store.clone() as Arc<dyn EventFeed>,
            models,
            bus,
            self.chronicle.reactions()[0].clone(),
            Arc::new(move |e| registry.upcast(e)),
        )
    }

    /// Steps `runner` until the feed has nothing new or a step fails.
    async fn drain(&self, runner: &ReactionRunner) -> Result<(), String> {
        loop {
            match runner.step().await {
                Ok(step) if step.read == 0 => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    async fn state(&self, aggregate_type: &str, id: &str) -> Value {
        self.chronicle
            .aggregate(aggregate_type)
            .expect("registered")
            .state(id, None)
            .await
            .unwrap_or_else(|e| panic!("{aggregate_type}/{id}: {e}"))
            .body
    }

    async fn events(&self, aggregate_type: &str, id: &str) -> Vec<chronicle_kernel::EventEnvelope> {
        use chronicle_kernel::EventStore;
        self.store
            .read_stream(&StreamId::new(aggregate_type, id), ReadRange::from(1))
            .await
            .expect("a read")
    }

    /// Each order reserved and released each sku at most once.
    async fn no_doubles(&self, skus: &[&str]) {
        for sku in skus {
            let mut seen = std::collections::BTreeSet::new();
            for e in self.events("inventory", sku).await {
                if e.event_type == "StockReserved" || e.event_type == "StockReleased" {
                    let key = (e.event_type.clone(), e.data["order"].to_string());
                    assert!(seen.insert(key.clone()), "{sku}: {key:?} twice");
                }
            }
        }
    }
}

/// Restocks a:2, b:1, then places o-1 (a:1, b:1) and o-2 (a:1, b:1): one of them is
/// confirmed (whichever the reaction reserves b for first: orders are handled at once), the
/// other rejected with its reservation of a released.
async fn two_orders(w: &World) {
    w.run("inventory", "a", json!({"type": "Restock", "quantity": 2}))
        .await;
    w.run("inventory", "b", json!({"type": "Restock", "quantity": 1}))
        .await;
    for o in ["o-1", "o-2"] {
        w.run(
            "orders",
            o,
            json!({"type": "Place", "customer": "c", "lines": [
                {"sku": "a", "quantity": 1}, {"sku": "b", "quantity": 1}]}),
        )
        .await;
    }
}

async fn check_two_orders(w: &World) {
    let mut statuses = vec![
        w.state("orders", "o-1").await["status"].clone(),
        w.state("orders", "o-2").await["status"].clone(),
    ];
    statuses.sort_by_key(|s| s.to_string());
    assert_eq!(statuses, [json!("confirmed"), json!("rejected")]);
    let a = w.state("inventory", "a").await;
    assert_eq!(
        (&a["available"], &a["reserved"]),
        (&json!(1), &json!(1)),
        "{a}"
    );
    let b = w.state("inventory", "b").await;
    assert_eq!(
        (&b["available"], &b["reserved"]),
        (&json!(0), &json!(1)),
        "{b}"
    );
    w.no_doubles(&["a", "b"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_point_of_the_workflow_is_completed_by_the_next_runner() {
    let mut crash_points = 0;
    for budget in 0.. {
        let w = world();
        two_orders(&w).await;
        let budget = Arc::new(Budget(AtomicUsize::new(budget)));
        let crashing = w.runner(
            Arc::new(FaultyModels {
                inner: w.store.clone(),
                budget: budget.clone(),
            }),
            Arc::new(FaultyBus {
                inner: w.chronicle.clone(),
                budget: budget.clone(),
            }),
        );
        let first = w.drain(&crashing).await;
        let crashed = budget.spent() && first.is_err();
        // The process after the crash: a new runner on the same stores.
        let restarted = w.runner(w.store.clone(), Arc::new(w.chronicle.clone()));
        w.drain(&restarted).await.expect("the restarted runner");
        check_two_orders(&w).await;
        w.store.close();
        if !crashed {
            break;
        }
        crash_points += 1;
    }
    // Both orders' workflows: 2 OrderPlaced, reservations, a confirm, a reject and a release,
    // each a write or a command, and the checkpoints between them.
    assert!(
        crash_points >= 15,
        "only {crash_points} crash points reached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_and_reordered_deliveries_change_nothing() {
    let w = world();
    w.run("inventory", "a", json!({"type": "Restock", "quantity": 5}))
        .await;
    w.run("inventory", "b", json!({"type": "Restock", "quantity": 5}))
        .await;
    w.run(
        "orders",
        "o-1",
        json!({"type": "Place", "customer": "c", "lines": [
            {"sku": "a", "quantity": 2}, {"sku": "b", "quantity": 3}]}),
    )
    .await;
    let reaction = w.chronicle.reactions()[0].clone();
    let step = ReactionStep {
        reaction: reaction.as_ref(),
        read_models: w.store.as_ref(),
        commands: &w.chronicle,
    };
    let placed = w.events("orders", "o-1").await.remove(0);
    // OrderPlaced twice: the reservations go out once.
    let first = step.handle(&placed).await.expect("handled");
    assert_eq!((first.dispatched, first.repeat), (2, false));
    let again = step.handle(&placed).await.expect("handled");
    assert!(again.repeat && again.dispatched == 0, "{again:?}");
    // The reservations delivered in reverse order, each twice: one Confirm.
    let mut reserved = Vec::new();
    for sku in ["a", "b"] {
        reserved.extend(
            w.events("inventory", sku)
                .await
                .into_iter()
                .filter(|e| e.event_type == "StockReserved"),
        );
    }
    assert_eq!(reserved.len(), 2);
    reserved.reverse();
    let mut dispatched = 0;
    for e in reserved.iter().chain(reserved.iter()) {
        dispatched += step.handle(e).await.expect("handled").dispatched;
    }
    assert_eq!(dispatched, 1, "one Confirm");
    assert_eq!(w.state("orders", "o-1").await["status"], "confirmed");
    // Every event once more, in any order, through a runner from the start: nothing changes.
    let before: Vec<_> = [("inventory", "a"), ("inventory", "b"), ("orders", "o-1")]
        .iter()
        .map(|(t, i)| (t.to_string(), i.to_string()))
        .collect();
    let mut lengths = Vec::new();
    for (t, i) in &before {
        lengths.push(w.events(t, i).await.len());
    }
    let runner = w.runner(w.store.clone(), Arc::new(w.chronicle.clone()));
    w.drain(&runner).await.expect("a replay from the start");
    for ((t, i), n) in before.iter().zip(lengths) {
        assert_eq!(w.events(t, i).await.len(), n, "{t}/{i} grew on redelivery");
    }
    let a = w.state("inventory", "a").await;
    assert_eq!(
        (&a["available"], &a["reserved"]),
        (&json!(3), &json!(2)),
        "{a}"
    );
    w.no_doubles(&["a", "b"]).await;
}
