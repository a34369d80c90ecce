//! The sample domains, registered together: what the shipped `chronicle` binary and the Lambda
//! functions under `functions/` serve. A team's own crate takes this one's place (see
//! `docs/your-domain.md`).

use chronicle_kernel::Domain;

/// Every sample domain: accounts, then orders and inventory with their fulfilment reaction.
pub fn domain() -> Domain {
    chronicle_accounts::domain().with(chronicle_orders::domain())
}
