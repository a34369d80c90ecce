//! An order: placed by a client, then confirmed or rejected by the fulfilment reaction.

use crate::{id, positive, Source};
use chronicle_kernel::{Aggregate, DomainError, DomainEvent, EventSchema, Refusal};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub const ORDER_PLACED: &str = "OrderPlaced";
pub const ORDER_CONFIRMED: &str = "OrderConfirmed";
pub const ORDER_REJECTED: &str = "OrderRejected";

/// The most lines an order may have: each becomes a command to an inventory.
pub const MAX_LINES: usize = 50;

/// The longest rejection reason accepted, in characters.
pub(crate) const MAX_REASON: usize = 1024;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Never served: an unplaced order is 404.
    #[default]
    Unplaced,
    /// Waiting for its reservations.
    Placed,
    /// Every line is reserved.
    Confirmed,
    /// A line could not be reserved; `reason` says which and why.
    Rejected,
}

/// Some units of one sku.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Line {
    /// The inventory's id.
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = "^[A-Za-z0-9._:-]{1,128}$")
    )]
    pub sku: String,
    #[schemars(range(min = 1))]
    pub quantity: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub status: OrderStatus,
    pub customer: String,
    pub lines: Vec<Line>,
    pub reason: Option<String>,
}

/// A command to an order, tagged by `type`. Only `Place` is for clients: `Confirm` and
/// `Reject` are issued by the fulfilment reaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum OrderCommand {
    /// Places the order; its stock is reserved afterwards, so it is accepted as `placed`.
    Place {
        #[schemars(length(min = 1, max = 128))]
        customer: String,
        /// 1 to 50 lines, each sku at most once.
        #[schemars(length(min = 1, max = 50))]
        lines: Vec<Line>,
    },
    /// Confirms a placed order (every line reserved); repeats change nothing.
    // `{}` rather than a unit variant: serde refuses unknown fields only on struct variants.
    Confirm {},
    /// Rejects a placed order; repeats change nothing.
    Reject {
        #[schemars(length(min = 1, max = 1024))]
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrderEvent {
    Placed { customer: String, lines: Vec<Line> },
    Confirmed,
    Rejected { reason: String },
}

#[derive(Serialize, Deserialize)]
struct PlacedData {
    customer: String,
    lines: Vec<Line>,
}
#[derive(Serialize, Deserialize)]
struct RejectedData {
    reason: String,
}

impl DomainEvent for OrderEvent {
    fn event_type(&self) -> &'static str {
        match self {
            OrderEvent::Placed { .. } => ORDER_PLACED,
            OrderEvent::Confirmed => ORDER_CONFIRMED,
            OrderEvent::Rejected { .. } => ORDER_REJECTED,
        }
    }

    fn to_data(&self) -> Value {
        match self {
            OrderEvent::Placed { customer, lines } => {
                json!({ "customer": customer, "lines": lines })
            }
            OrderEvent::Confirmed => json!({}),
            OrderEvent::Rejected { reason } => json!({ "reason": reason }),
        }
    }

    fn from_data(event_type: &str, data: &Value) -> Result<Self, String> {
        Self::decode(event_type, data)
    }

    fn from_json(event_type: &str, json: &str) -> Result<Self, String> {
        Self::decode(event_type, json)
    }
}

impl OrderEvent {
    fn decode(event_type: &str, src: impl Source) -> Result<Self, String> {
        Ok(match event_type {
            ORDER_PLACED => {
                let d: PlacedData = src.get()?;
                OrderEvent::Placed {
                    customer: d.customer,
                    lines: d.lines,
                }
            }
            ORDER_CONFIRMED => OrderEvent::Confirmed,
            ORDER_REJECTED => {
                let d: RejectedData = src.get()?;
                OrderEvent::Rejected { reason: d.reason }
            }
            other => return Err(format!("unknown order event type `{other}`")),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("the order does not exist: place it first")]
    NotPlaced,
    #[error("the order is already placed")]
    AlreadyPlaced,
    #[error("the order was rejected")]
    Rejected,
    #[error("the order was confirmed")]
    Confirmed,
}

impl DomainError for OrderError {
    const CODES: &'static [&'static str] = &[
        "order_not_found",
        "order_already_placed",
        "order_rejected",
        "order_confirmed",
    ];

    fn code(&self) -> &'static str {
        match self {
            OrderError::NotPlaced => "order_not_found",
            OrderError::AlreadyPlaced => "order_already_placed",
            OrderError::Rejected => "order_rejected",
            OrderError::Confirmed => "order_confirmed",
        }
    }

    fn refusal(&self) -> Refusal {
        match self {
            OrderError::NotPlaced => Refusal::NotFound,
            _ => Refusal::Rule,
        }
    }
}

/// `validate` of `Place`: field names in messages are JSON paths, line indexes from 0.
fn validate_place(customer: &str, lines: &[Line]) -> Result<(), String> {
    if customer.trim().is_empty() {
        return Err("customer must not be blank".into());
    }
    if customer.chars().count() > 128 {
        return Err("customer must have 1 to 128 characters".into());
    }
    if customer.chars().any(char::is_control) {
        return Err("customer must not contain control characters".into());
    }
    if lines.is_empty() {
        return Err("lines: at least 1 line is needed".into());
    }
    if lines.len() > MAX_LINES {
        return Err(format!(
            "lines: at most {MAX_LINES}, this order has {}",
            lines.len()
        ));
    }
    let mut seen = BTreeMap::new();
    for (i, line) in lines.iter().enumerate() {
        id(&format!("lines[{i}].sku"), &line.sku)?;
        positive(&format!("lines[{i}].quantity"), line.quantity)?;
        if let Some(first) = seen.insert(line.sku.as_str(), i) {
            return Err(format!(
                "lines: sku {:?} appears twice (lines[{first}] and lines[{i}])",
                line.sku
            ));
        }
    }
    Ok(())
}

impl Aggregate for Order {
    const TYPE: &'static str = "orders";
    const STATE_VERSION: u32 = 1;
    const INTERNAL_COMMANDS: &'static [&'static str] = &["Confirm", "Reject"];
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;
    type View = OrderView;

    fn schema() -> EventSchema {
        EventSchema::new()
            .event(ORDER_PLACED, 1)
            .event(ORDER_CONFIRMED, 1)
            .event(ORDER_REJECTED, 1)
    }

    fn validate(command: &OrderCommand) -> Result<(), String> {
        match command {
            OrderCommand::Place { customer, lines } => validate_place(customer, lines),
            OrderCommand::Confirm {} => Ok(()),
            OrderCommand::Reject { reason } => {
                if reason.trim().is_empty() || reason.chars().count() > MAX_REASON {
                    return Err(format!("reason must have 1 to {MAX_REASON} characters"));
                }
                Ok(())
            }
        }
    }

    fn decide(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        use OrderStatus::*;
        match (self.status, command) {
            (Unplaced, OrderCommand::Place { customer, lines }) => Ok(vec![OrderEvent::Placed {
                customer: customer.clone(),
                lines: lines.clone(),
            }]),
            (_, OrderCommand::Place { .. }) => Err(OrderError::AlreadyPlaced),
            (Unplaced, _) => Err(OrderError::NotPlaced),
            (Placed, OrderCommand::Confirm {}) => Ok(vec![OrderEvent::Confirmed]),
            (Confirmed, OrderCommand::Confirm {}) => Ok(vec![]),
            (Rejected, OrderCommand::Confirm {}) => Err(OrderError::Rejected),
            (Placed, OrderCommand::Reject { reason }) => Ok(vec![OrderEvent::Rejected {
                reason: reason.clone(),
            }]),
            (Rejected, OrderCommand::Reject { .. }) => Ok(vec![]),
            (Confirmed, OrderCommand::Reject { .. }) => Err(OrderError::Confirmed),
        }
    }

    fn evolve(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::Placed { customer, lines } => {
                self.status = OrderStatus::Placed;
                self.customer = customer.clone();
                self.lines = lines.clone();
            }
            OrderEvent::Confirmed => self.status = OrderStatus::Confirmed,
            OrderEvent::Rejected { reason } => {
                self.status = OrderStatus::Rejected;
                self.reason = Some(reason.clone());
            }
        }
    }

    fn exists(&self) -> bool {
        self.status != OrderStatus::Unplaced
    }

    fn view(&self, id: &str, version: u64) -> OrderView {
        OrderView {
            id: id.to_owned(),
            status: self.status,
            customer: self.customer.clone(),
            lines: self.lines.clone(),
            reason: self.reason.clone(),
            version,
        }
    }
}

/// What clients see of an order (`GET /orders/{id}`, and the documents of
/// `orders_by_customer`). Every key is always present: `reason` is `null` unless the order was
/// rejected, so clients read one shape whatever the status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderView {
    pub id: String,
    /// `placed`, `confirmed` or `rejected` (`unplaced` orders are not served).
    pub status: OrderStatus,
    pub customer: String,
    pub lines: Vec<Line>,
    /// Why the order was rejected: the sku, then the inventory's reason. `null` otherwise.
    pub reason: Option<String>,
    /// The version of the order this view reflects.
    pub version: u64,
}
