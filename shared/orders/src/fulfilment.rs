//! The fulfilment process manager: one instance per order, fed by the order's `OrderPlaced`
//! and by the inventories' answers to the reservations it asked for.
//!
//! Events of different streams may reach it in any order (the kernel only removes duplicates),
//! so every decision looks at what the instance has seen so far, not at what should have come
//! first: a reservation heard of before the order's placement is counted and waited on, and a
//! reservation heard of after the order was rejected is released at once.

use crate::order::MAX_REASON;
use crate::{Inventory, InventoryCommand, InventoryEvent, Line, Order, OrderCommand, OrderEvent};
use chronicle_kernel::reaction::decode;
use chronicle_kernel::{Aggregate, Dispatch, EventEnvelope, Reaction};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeSet;

/// Reserves each line of a placed order, then confirms the order once every line is reserved,
/// or rejects it at the first refusal and releases what was reserved for it.
pub struct Fulfilment;

/// What one order's fulfilment has seen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FulfilmentState {
    /// The order's lines; empty until its `OrderPlaced` arrives.
    pub lines: Vec<Line>,
    /// The skus holding a reservation made for the order (released ones included).
    pub reserved: BTreeSet<String>,
    /// Why the order was rejected: the first refused sku and the inventory's reason.
    pub rejected: Option<String>,
    /// Whether `Confirm` was issued.
    pub confirmed: bool,
}

impl FulfilmentState {
    fn lists(&self, sku: &str) -> bool {
        self.lines.iter().any(|l| l.sku == sku)
    }

    fn all_reserved(&self) -> bool {
        !self.lines.is_empty() && self.lines.iter().all(|l| self.reserved.contains(&l.sku))
    }
}

fn release(sku: &str, order: &str) -> Dispatch {
    Dispatch::to::<Inventory>(
        sku,
        &InventoryCommand::Release {
            order: order.to_owned(),
        },
    )
}

fn confirm(state: &mut FulfilmentState, order: &str) -> Dispatch {
    state.confirmed = true;
    Dispatch::to::<Order>(order, &OrderCommand::Confirm {})
}

impl Fulfilment {
    fn placed(state: &mut FulfilmentState, order: &str, lines: Vec<Line>) -> Vec<Dispatch> {
        // An order is placed once; anything else would be a second instance's business.
        if !state.lines.is_empty() {
            return vec![];
        }
        state.lines = lines;
        // Rejected before its placement arrived: the rejection released what there was.
        if state.rejected.is_some() {
            return vec![];
        }
        let mut out: Vec<Dispatch> = state
            .lines
            .iter()
            .filter(|l| !state.reserved.contains(&l.sku))
            .map(|l| {
                Dispatch::to::<Inventory>(
                    &l.sku,
                    &InventoryCommand::Reserve {
                        order: order.to_owned(),
                        quantity: l.quantity,
                    },
                )
            })
            .collect();
        // Reservations for skus the order does not list would never be released otherwise.
        out.extend(
            state
                .reserved
                .iter()
                .filter(|sku| !state.lists(sku))
                .map(|sku| release(sku, order)),
        );
        if state.all_reserved() {
            out.push(confirm(state, order));
        }
        out
    }

    fn reserved(state: &mut FulfilmentState, sku: &str, order: &str) -> Vec<Dispatch> {
        state.reserved.insert(sku.to_owned());
        let unwanted = !state.lines.is_empty() && !state.lists(sku);
        if state.rejected.is_some() || unwanted {
            vec![release(sku, order)]
        } else if !state.confirmed && state.all_reserved() {
            vec![confirm(state, order)]
        } else {
            vec![]
        }
    }

    fn refused(state: &mut FulfilmentState, sku: &str, order: &str, reason: &str) -> Vec<Dispatch> {
        let unwanted = !state.lines.is_empty() && !state.lists(sku);
        if state.rejected.is_some() || state.confirmed || unwanted {
            return vec![];
        }
        // The order refuses longer reasons, and would then stay placed for ever.
        let reason: String = format!("{sku}: {reason}")
            .chars()
            .take(MAX_REASON)
            .collect();
        state.rejected = Some(reason.clone());
        let mut out = vec![Dispatch::to::<Order>(
            order,
            &OrderCommand::Reject { reason },
        )];
        out.extend(state.reserved.iter().map(|sku| release(sku, order)));
        out
    }
}

impl Reaction for Fulfilment {
    type State = FulfilmentState;
    const NAME: &'static str = "order_fulfilment";

    fn subscriptions(&self) -> Vec<(&'static str, &'static str)> {
        vec![
            (Order::TYPE, crate::ORDER_PLACED),
            (Inventory::TYPE, crate::STOCK_RESERVED),
            (Inventory::TYPE, crate::RESERVATION_REJECTED),
        ]
    }

    /// The order: the stream's id for an order's events, the `order` field of an inventory's.
    fn instance(&self, event: &EventEnvelope) -> Option<String> {
        match event.aggregate_type.as_str() {
            Order::TYPE => Some(event.aggregate_id.clone()),
            Inventory::TYPE => event
                .data
                .get("order")
                .and_then(Value::as_str)
                .map(str::to_owned),
            _ => None,
        }
    }

    fn react(
        &self,
        state: &mut FulfilmentState,
        event: &EventEnvelope,
    ) -> Result<Vec<Dispatch>, String> {
        let unexpected = || {
            format!(
                "{} does not react to {} `{}`",
                Self::NAME,
                event.aggregate_type,
                event.event_type
            )
        };
        match event.aggregate_type.as_str() {
            Order::TYPE => match decode::<Order>(event)? {
                OrderEvent::Placed { lines, .. } => {
                    Ok(Self::placed(state, &event.aggregate_id, lines))
                }
                _ => Err(unexpected()),
            },
            // The sku is the inventory's id.
            Inventory::TYPE => match decode::<Inventory>(event)? {
                InventoryEvent::Reserved { order, .. } => {
                    Ok(Self::reserved(state, &event.aggregate_id, &order))
                }
                InventoryEvent::ReservationRejected { order, reason, .. } => {
                    Ok(Self::refused(state, &event.aggregate_id, &order, &reason))
                }
                _ => Err(unexpected()),
            },
            _ => Err(unexpected()),
        }
    }
}
