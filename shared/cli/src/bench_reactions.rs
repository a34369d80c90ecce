//! `chronicle bench --reactions`: the reaction path end to end on the embedded store, as
//! `serve` runs it (projections and the reaction following the feed in the background). Each
//! of `--placers` clients places an order through the command path and waits until its
//! `OrderConfirmed` event shows in the store's feed (the fulfilment reaction reserved every line
//! and confirmed it) before placing the next: the latency runs from the placement's answer to
//! that moment, with `--placers` workflows in flight. The orders sample is the workload.

use anyhow::{bail, Context};
use chronicle_kernel::{CommandOptions, EventFeed};
use hdrhistogram::Histogram;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// What the reaction bench measures with.
pub(crate) struct ReactionBench {
    pub orders: usize,
    pub lines: usize,
    pub placers: usize,
    pub json: bool,
}

pub(crate) async fn run(bench: ReactionBench, store_args: &crate::StoreArgs) -> anyhow::Result<()> {
    if bench.orders == 0 || bench.lines == 0 || bench.placers == 0 {
        bail!("--orders, --order-lines and --placers must be at least 1");
    }
    if bench.lines > 50 {
        bail!("--order-lines: an order has at most 50 lines");
    }
    let domain = chronicle_orders::domain();
    let (store, chronicle) = crate::open(&domain, store_args, crate::Access::Write)?;
    let (stop, stopped) = watch::channel(false);
    let mut background = Vec::new();
    for p in chronicle.projections() {
        let runner = chronicle.runner(p.name()).context("a projection runner")?;
        background.push(tokio::spawn(runner.run(stopped.clone())));
    }
    for r in chronicle.reactions() {
        let runner = chronicle
            .reaction_runner(r.name())
            .context("a reaction runner")?;
        background.push(tokio::spawn(runner.run(stopped.clone())));
    }
    let inventory = chronicle
        .aggregate("inventory")
        .context("inventory is registered")?
        .clone();
    let orders = chronicle
        .aggregate("orders")
        .context("orders are registered")?
        .clone();
    // Enough stock that every order is confirmed: the latency measured is the whole path.
    for l in 0..bench.lines {
        let restock = json!({"type": "Restock", "quantity": (bench.orders * 2) as u64});
        inventory
            .execute(
                &format!("sku-{l}"),
                restock.to_string().as_bytes(),
                CommandOptions::default(),
            )
            .await?;
    }
    let place = json!({
        "type": "Place",
        "customer": "bench",
        "lines": (0..bench.lines).map(|l| json!({"sku": format!("sku-{l}"), "quantity": 1})).collect::<Vec<_>>(),
    })
    .to_string();

    // Who waits for which order's confirmation, told by the feed watcher.
    type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Instant>>>>;
    let waiters: Waiters = Arc::default();
    let head = store.feed_head().await?;
    let watcher = {
        let (store, waiters) = (store.clone(), waiters.clone());
        tokio::spawn(async move {
            let mut after = head;
            loop {
                for fe in store.read_feed(after, 1000).await? {
                    after = fe.position;
                    if fe.event.event_type == "OrderConfirmed" {
                        let waiter = waiters
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&fe.event.aggregate_id);
                        if let Some(w) = waiter {
                            let _ = w.send(Instant::now());
                        }
                    }
                }
                store
                    .wait_for_events(after, Duration::from_millis(50))
                    .await;
            }
            #[allow(unreachable_code)]
            anyhow::Ok(())
        })
    };
    let started = Instant::now();
    let mut placers = Vec::new();
    for p in 0..bench.placers {
        let (orders, waiters, place) = (orders.clone(), waiters.clone(), place.clone());
        let (n, step) = (bench.orders, bench.placers);
        placers.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
            for i in (p..n).step_by(step) {
                let id = format!("order-{i:07}");
                let (tx, rx) = oneshot::channel();
                waiters
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id.clone(), tx);
                orders
                    .execute(&id, place.as_bytes(), CommandOptions::default())
                    .await
                    .with_context(|| format!("placing {id}"))?;
                let answered = Instant::now();
                let confirmed = tokio::time::timeout(Duration::from_secs(60), rx)
                    .await
                    .with_context(|| format!("{id} unconfirmed after a minute"))??;
                // The confirmation can show before the placement's answer is back.
                hist.record(
                    confirmed
                        .saturating_duration_since(answered)
                        .as_micros()
                        .max(1) as u64,
                )?;
            }
            anyhow::Ok(hist)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    for p in placers {
        hist.add(p.await??)?;
    }
    let secs = started.elapsed().as_secs_f64();
    watcher.abort();
    let _ = stop.send(true);
    for b in background {
        let _ = b.await;
    }
    store.close();

    let ms = |us: u64| us as f64 / 1000.0;
    let report = json!({
        "orders": bench.orders,
        "lines_per_order": bench.lines,
        "placers": bench.placers,
        "reaction_seconds": secs,
        "reaction_orders_per_sec": bench.orders as f64 / secs,
        "reaction_p50_ms": ms(hist.value_at_quantile(0.50)),
        "reaction_p90_ms": ms(hist.value_at_quantile(0.90)),
        "reaction_p99_ms": ms(hist.value_at_quantile(0.99)),
        "reaction_max_ms": ms(hist.max()),
    });
    if bench.json {
        println!("{report}");
    } else {
        println!(
            "reactions  {} orders of {} lines, {} in flight at a time, all confirmed in {secs:.2} s \
             ({:.0} orders/s); placed to confirmed: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            bench.orders,
            bench.lines,
            bench.placers,
            bench.orders as f64 / secs,
            ms(hist.value_at_quantile(0.50)),
            ms(hist.value_at_quantile(0.90)),
            ms(hist.value_at_quantile(0.99)),
            ms(hist.max()),
        );
    }
    Ok(())
}
