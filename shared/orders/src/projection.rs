//! The orders-by-customer read model: one document per order, found by customer.

use crate::Order;
use chronicle_kernel::{Aggregate, DomainEvent, EventEnvelope, Projection};
use serde::Deserialize;
use serde_json::Value;

pub struct OrdersByCustomer;

impl OrdersByCustomer {
    pub const NAME: &'static str = "orders_by_customer";
}

impl Projection for OrdersByCustomer {
    fn name(&self) -> &str {
        Self::NAME
    }
    fn aggregate_type(&self) -> &str {
        Order::TYPE
    }
    fn indexes(&self) -> &[&'static str] {
        &["customer"]
    }
    fn document_schema(
        &self,
        generator: &mut chronicle_kernel::schemars::SchemaGenerator,
    ) -> Option<chronicle_kernel::schemars::Schema> {
        Some(generator.subschema_for::<crate::OrderView>())
    }

    fn apply(&self, doc: Option<&Value>, event: &EventEnvelope) -> Result<Value, String> {
        // The document is the order's view, a superset of its state's fields.
        let mut order = match doc {
            Some(d) => Order::deserialize(d).map_err(|e| format!("stored document: {e}"))?,
            None => Order::default(),
        };
        let e = <Order as Aggregate>::Event::from_data(&event.event_type, &event.data)?;
        order.evolve(&e);
        serde_json::to_value(order.view(&event.aggregate_id, event.version))
            .map_err(|e| e.to_string())
    }
}
