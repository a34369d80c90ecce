//! The accounts-by-owner read model: one document per account, found by owner.

use crate::{view, Account};
use chronicle_kernel::{Aggregate, DomainEvent, EventEnvelope, Projection};
use serde::Deserialize;
use serde_json::Value;

pub struct AccountsByOwner;

impl AccountsByOwner {
    pub const NAME: &'static str = "accounts_by_owner";
}

impl Projection for AccountsByOwner {
    fn name(&self) -> &str {
        Self::NAME
    }
    fn aggregate_type(&self) -> &str {
        Account::TYPE
    }
    fn indexes(&self) -> &[&'static str] {
        &["owner"]
    }
    fn document_schema(
        &self,
        generator: &mut chronicle_kernel::schemars::SchemaGenerator,
    ) -> Option<chronicle_kernel::schemars::Schema> {
        Some(generator.subschema_for::<crate::AccountView>())
    }

    fn apply(&self, doc: Option<&Value>, event: &EventEnvelope) -> Result<Value, String> {
        // The document is the account's view, a superset of its state's fields.
        let mut account = match doc {
            Some(d) => Account::deserialize(d).map_err(|e| format!("stored document: {e}"))?,
            None => Account::default(),
        };
        let e = <Account as Aggregate>::Event::from_data(&event.event_type, &event.data)?;
        account.evolve(&e);
        serde_json::to_value(view(&event.aggregate_id, &account, event.version))
            .map_err(|e| e.to_string())
    }
}
