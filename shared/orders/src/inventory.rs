//! The stock of one sku (the aggregate's id): restocked by clients, reserved for orders and
//! released again by the fulfilment reaction.

use crate::{id, positive, Source};
use chronicle_kernel::{Aggregate, DomainError, DomainEvent, EventSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub const RESTOCKED: &str = "Restocked";
pub const STOCK_RESERVED: &str = "StockReserved";
pub const RESERVATION_REJECTED: &str = "ReservationRejected";
pub const STOCK_RELEASED: &str = "StockReleased";

/// A sku's stock. `available + reserved` is everything ever restocked: reservations and
/// releases only move units between the two.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// Whether a restock ever happened: until then the sku does not exist for clients, even if
    /// a reservation was refused (and recorded) against it.
    pub restocked: bool,
    pub available: u64,
    pub reserved: u64,
    /// The units each order holds, by order id.
    pub reservations: BTreeMap<String, u64>,
}

/// A command to a sku's stock, tagged by `type`. Only `Restock` is for clients: `Reserve` and
/// `Release` are issued by the fulfilment reaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum InventoryCommand {
    /// Adds units to the available stock.
    Restock {
        #[schemars(range(min = 1))]
        quantity: u64,
    },
    /// Sets units aside for an order, if enough are available; otherwise records why not.
    /// Repeats for an order that holds a reservation change nothing.
    Reserve {
        #[schemars(
            length(min = 1, max = 128),
            regex(pattern = "^[A-Za-z0-9._:-]{1,128}$")
        )]
        order: String,
        #[schemars(range(min = 1))]
        quantity: u64,
    },
    /// Gives an order's reserved units back to the available stock; nothing if it holds none.
    Release {
        #[schemars(
            length(min = 1, max = 128),
            regex(pattern = "^[A-Za-z0-9._:-]{1,128}$")
        )]
        order: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InventoryEvent {
    Restocked {
        quantity: u64,
    },
    Reserved {
        order: String,
        quantity: u64,
    },
    /// A reservation refused: an event rather than an error, so the reaction hears of it.
    ReservationRejected {
        order: String,
        quantity: u64,
        reason: String,
    },
    Released {
        order: String,
        quantity: u64,
    },
}

#[derive(Serialize, Deserialize)]
struct RestockedData {
    quantity: u64,
}
#[derive(Serialize, Deserialize)]
struct ReservationData {
    order: String,
    quantity: u64,
}
#[derive(Serialize, Deserialize)]
struct RejectedData {
    order: String,
    quantity: u64,
    reason: String,
}

impl DomainEvent for InventoryEvent {
    fn event_type(&self) -> &'static str {
        match self {
            InventoryEvent::Restocked { .. } => RESTOCKED,
            InventoryEvent::Reserved { .. } => STOCK_RESERVED,
            InventoryEvent::ReservationRejected { .. } => RESERVATION_REJECTED,
            InventoryEvent::Released { .. } => STOCK_RELEASED,
        }
    }

    fn to_data(&self) -> Value {
        match self {
            InventoryEvent::Restocked { quantity } => json!({ "quantity": quantity }),
            InventoryEvent::Reserved { order, quantity }
            | InventoryEvent::Released { order, quantity } => {
                json!({ "order": order, "quantity": quantity })
            }
            InventoryEvent::ReservationRejected {
                order,
                quantity,
                reason,
            } => json!({ "order": order, "quantity": quantity, "reason": reason }),
        }
    }

    fn from_data(event_type: &str, data: &Value) -> Result<Self, String> {
        Self::decode(event_type, data)
    }

    fn from_json(event_type: &str, json: &str) -> Result<Self, String> {
        Self::decode(event_type, json)
    }
}

impl InventoryEvent {
    fn decode(event_type: &str, src: impl Source) -> Result<Self, String> {
        Ok(match event_type {
            RESTOCKED => {
                let d: RestockedData = src.get()?;
                InventoryEvent::Restocked {
                    quantity: d.quantity,
                }
            }
            STOCK_RESERVED => {
                let d: ReservationData = src.get()?;
                InventoryEvent::Reserved {
                    order: d.order,
                    quantity: d.quantity,
                }
            }
            RESERVATION_REJECTED => {
                let d: RejectedData = src.get()?;
                InventoryEvent::ReservationRejected {
                    order: d.order,
                    quantity: d.quantity,
                    reason: d.reason,
                }
            }
            STOCK_RELEASED => {
                let d: ReservationData = src.get()?;
                InventoryEvent::Released {
                    order: d.order,
                    quantity: d.quantity,
                }
            }
            other => return Err(format!("unknown inventory event type `{other}`")),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    /// Refused so that no later reservation or release can overflow either count.
    #[error("restocking {quantity} would overflow the stock count ({available} available, {reserved} reserved)")]
    StockOverflow {
        available: u64,
        reserved: u64,
        quantity: u64,
    },
}

impl DomainError for InventoryError {
    const CODES: &'static [&'static str] = &["stock_overflow"];

    fn code(&self) -> &'static str {
        match self {
            InventoryError::StockOverflow { .. } => "stock_overflow",
        }
    }
}

impl Aggregate for Inventory {
    const TYPE: &'static str = "inventory";
    const STATE_VERSION: u32 = 1;
    const INTERNAL_COMMANDS: &'static [&'static str] = &["Reserve", "Release"];
    type Command = InventoryCommand;
    type Event = InventoryEvent;
    type Error = InventoryError;
    type View = InventoryView;

    fn schema() -> EventSchema {
        EventSchema::new()
            .event(RESTOCKED, 1)
            .event(STOCK_RESERVED, 1)
            .event(RESERVATION_REJECTED, 1)
            .event(STOCK_RELEASED, 1)
    }

    fn validate(command: &InventoryCommand) -> Result<(), String> {
        match command {
            InventoryCommand::Restock { quantity } => positive("quantity", *quantity),
            InventoryCommand::Reserve { order, quantity } => {
                id("order", order)?;
                positive("quantity", *quantity)
            }
            InventoryCommand::Release { order } => id("order", order),
        }
    }

    fn decide(&self, command: &InventoryCommand) -> Result<Vec<InventoryEvent>, InventoryError> {
        Ok(match command {
            InventoryCommand::Restock { quantity } => {
                let total = self.available.checked_add(self.reserved);
                if total.and_then(|t| t.checked_add(*quantity)).is_none() {
                    return Err(InventoryError::StockOverflow {
                        available: self.available,
                        reserved: self.reserved,
                        quantity: *quantity,
                    });
                }
                vec![InventoryEvent::Restocked {
                    quantity: *quantity,
                }]
            }
            // Never an error: the reaction must hear the outcome as an event, either way.
            InventoryCommand::Reserve { order, quantity } => {
                let rejected = |reason: String| InventoryEvent::ReservationRejected {
                    order: order.clone(),
                    quantity: *quantity,
                    reason,
                };
                if self.reservations.contains_key(order) {
                    vec![]
                } else if !self.restocked {
                    vec![rejected("sku never restocked".into())]
                } else if self.available < *quantity {
                    vec![rejected(format!(
                        "insufficient stock: {} available, {quantity} requested",
                        self.available
                    ))]
                } else {
                    vec![InventoryEvent::Reserved {
                        order: order.clone(),
                        quantity: *quantity,
                    }]
                }
            }
            InventoryCommand::Release { order } => match self.reservations.get(order) {
                Some(quantity) => vec![InventoryEvent::Released {
                    order: order.clone(),
                    quantity: *quantity,
                }],
                None => vec![],
            },
        })
    }

    fn evolve(&mut self, event: &InventoryEvent) {
        // decide() guards these; saturating keeps evolve total for any stored history.
        match event {
            InventoryEvent::Restocked { quantity } => {
                self.restocked = true;
                self.available = self.available.saturating_add(*quantity);
            }
            InventoryEvent::Reserved { order, quantity } => {
                self.available = self.available.saturating_sub(*quantity);
                self.reserved = self.reserved.saturating_add(*quantity);
                let held = self.reservations.entry(order.clone()).or_default();
                *held = held.saturating_add(*quantity);
            }
            InventoryEvent::ReservationRejected { .. } => {}
            InventoryEvent::Released { order, quantity } => {
                self.available = self.available.saturating_add(*quantity);
                self.reserved = self.reserved.saturating_sub(*quantity);
                self.reservations.remove(order);
            }
        }
    }

    fn exists(&self) -> bool {
        self.restocked
    }

    fn view(&self, id: &str, version: u64) -> InventoryView {
        InventoryView {
            sku: id.to_owned(),
            available: self.available,
            reserved: self.reserved,
            version,
        }
    }
}

/// What clients see of a sku's stock (`GET /inventory/{sku}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InventoryView {
    pub sku: String,
    /// Units free to reserve.
    pub available: u64,
    /// Units held for orders.
    pub reserved: u64,
    /// The version of the stock this view reflects.
    pub version: u64,
}
