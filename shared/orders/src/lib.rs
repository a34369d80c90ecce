//! The second sample domain: orders and inventory, kept consistent by a process manager.
//!
//! A client places an [`Order`] (`POST /orders/{id}/commands`); the [`Fulfilment`] reaction
//! asks each line's [`Inventory`] (one aggregate per sku) to reserve stock for it, and once every
//! line is reserved it confirms the order. The first refusal rejects the order instead, and
//! every reservation already made for it is released. Clients only place orders and restock;
//! reserving, releasing, confirming and rejecting are internal commands, issued by the reaction
//! alone.
//!
//! At rest this keeps one invariant: each sku's reserved stock is the sum of what confirmed
//! orders hold of it, stock never goes below zero, and an order is confirmed only if all its
//! lines were reserved.
//!
//! Quantities are positive integers; stock counts are overflow-checked on restock, so the
//! arithmetic of reservations can never overflow.

mod fulfilment;
mod inventory;
mod order;
mod projection;

pub use fulfilment::{Fulfilment, FulfilmentState};
pub use inventory::{
    Inventory, InventoryCommand, InventoryError, InventoryEvent, InventoryView,
    RESERVATION_REJECTED, RESTOCKED, STOCK_RELEASED, STOCK_RESERVED,
};
pub use order::{
    Line, Order, OrderCommand, OrderError, OrderEvent, OrderStatus, OrderView, MAX_LINES,
    ORDER_CONFIRMED, ORDER_PLACED, ORDER_REJECTED,
};
pub use projection::OrdersByCustomer;

use serde::de::DeserializeOwned;
use serde_json::Value;

/// The orders domain: both aggregates, the orders-by-customer list read model
/// (`GET /orders?customer=...`) and the fulfilment reaction between them.
pub fn domain() -> chronicle_kernel::Domain {
    chronicle_kernel::Domain::new()
        .aggregate::<Inventory>()
        .aggregate::<Order>()
        .list(OrdersByCustomer)
        .reaction(Fulfilment)
}

/// Where event data is decoded from: a parsed `Value` or, on bulk replay, JSON text (which
/// skips building the intermediate `Value`).
trait Source {
    fn get<T: DeserializeOwned>(self) -> Result<T, String>;
}

impl Source for &Value {
    fn get<T: DeserializeOwned>(self) -> Result<T, String> {
        T::deserialize(self).map_err(|e| e.to_string())
    }
}

impl Source for &str {
    fn get<T: DeserializeOwned>(self) -> Result<T, String> {
        serde_json::from_str(self).map_err(|e| e.to_string())
    }
}

/// `validate`'s message for a quantity of zero.
fn positive(field: &str, quantity: u64) -> Result<(), String> {
    if quantity == 0 {
        return Err(format!("{field} must be a positive integer"));
    }
    Ok(())
}

/// `validate`'s message for a value that becomes (or names) an aggregate id.
fn id(field: &str, value: &str) -> Result<(), String> {
    chronicle_kernel::validate_id(value).map_err(|e| format!("{field} {value:?}: {e}"))
}
