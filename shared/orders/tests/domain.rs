//! Given/when/then tests of the orders domain: every rule of the inventory and the order
//! (`validate`, `decide`, `evolve`), their command JSON and views, the orders-by-customer
//! projection, and the fulfilment reaction, down to reordered deliveries and a simulation of
//! many random interleavings that checks the domain's invariant at rest.

use chronicle_kernel::aggregate::fold;
use chronicle_kernel::reaction::Reaction;
use chronicle_kernel::schemars::schema_for;
use chronicle_kernel::{
    index_values, Aggregate, Dispatch, DomainError, DomainEvent, EventEnvelope, Projection, Refusal,
};
use chronicle_orders::{
    domain, Fulfilment, FulfilmentState, Inventory, InventoryCommand, InventoryError,
    InventoryEvent, Line, Order, OrderCommand, OrderError, OrderEvent, OrderStatus,
    OrdersByCustomer, MAX_LINES, ORDER_CONFIRMED, ORDER_PLACED, ORDER_REJECTED,
    RESERVATION_REJECTED, RESTOCKED, STOCK_RELEASED, STOCK_RESERVED,
};
use chronicle_testkit::{envelope, envelope_of, given, given_reaction, Given};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

// ---------------------------------------------------------------------------------------------
// Shorthands
// ---------------------------------------------------------------------------------------------

/// A sku's stock after `history`.
fn stock(history: &[InventoryEvent]) -> Given<Inventory> {
    given(history)
}
/// An order after `history`.
fn order(history: &[OrderEvent]) -> Given<Order> {
    given(history)
}

fn restocked(quantity: u64) -> InventoryEvent {
    InventoryEvent::Restocked { quantity }
}
fn reserved(order: &str, quantity: u64) -> InventoryEvent {
    InventoryEvent::Reserved {
        order: order.into(),
        quantity,
    }
}
fn refused(order: &str, quantity: u64, reason: &str) -> InventoryEvent {
    InventoryEvent::ReservationRejected {
        order: order.into(),
        quantity,
        reason: reason.into(),
    }
}
fn released(order: &str, quantity: u64) -> InventoryEvent {
    InventoryEvent::Released {
        order: order.into(),
        quantity,
    }
}
fn restock(quantity: u64) -> InventoryCommand {
    InventoryCommand::Restock { quantity }
}
fn reserve(order: &str, quantity: u64) -> InventoryCommand {
    InventoryCommand::Reserve {
        order: order.into(),
        quantity,
    }
}
fn release(order: &str) -> InventoryCommand {
    InventoryCommand::Release {
        order: order.into(),
    }
}

fn line(sku: &str, quantity: u64) -> Line {
    Line {
        sku: sku.into(),
        quantity,
    }
}
fn place(customer: &str, lines: &[Line]) -> OrderCommand {
    OrderCommand::Place {
        customer: customer.into(),
        lines: lines.to_vec(),
    }
}
fn placed(customer: &str, lines: &[Line]) -> OrderEvent {
    OrderEvent::Placed {
        customer: customer.into(),
        lines: lines.to_vec(),
    }
}
fn rejected(reason: &str) -> OrderEvent {
    OrderEvent::Rejected {
        reason: reason.into(),
    }
}
fn reject(reason: &str) -> OrderCommand {
    OrderCommand::Reject {
        reason: reason.into(),
    }
}

/// The commands the reaction issues.
fn reserve_to(sku: &str, order: &str, quantity: u64) -> Dispatch {
    Dispatch::to::<Inventory>(sku, &reserve(order, quantity))
}
fn release_to(sku: &str, order: &str) -> Dispatch {
    Dispatch::to::<Inventory>(sku, &release(order))
}
fn confirm_to(order: &str) -> Dispatch {
    Dispatch::to::<Order>(order, &OrderCommand::Confirm {})
}
fn reject_to(order: &str, reason: &str) -> Dispatch {
    Dispatch::to::<Order>(order, &reject(reason))
}

/// Stored events, as the reaction and the projection get them.
fn inv(sku: &str, version: u64, event: &InventoryEvent) -> EventEnvelope {
    envelope_of::<Inventory>(sku, version, event)
}
fn ord(id: &str, version: u64, event: &OrderEvent) -> EventEnvelope {
    envelope_of::<Order>(id, version, event)
}

/// The sorted keys of a JSON object.
fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

// ---------------------------------------------------------------------------------------------
// Inventory: restock
// ---------------------------------------------------------------------------------------------

#[test]
fn restocking_a_new_sku_creates_it() {
    assert!(!Inventory::default().exists());
    let state = stock(&[]).when(restock(5)).then(&[restocked(5)]);
    assert!(state.exists());
    assert_eq!(
        state,
        Inventory {
            restocked: true,
            available: 5,
            reserved: 0,
            reservations: BTreeMap::new(),
        }
    );
    let state = stock(&[restocked(5), reserved("o-1", 2)])
        .when(restock(3))
        .then(&[restocked(3)]);
    assert_eq!((state.available, state.reserved), (6, 2));
}

#[test]
fn restocking_nothing_is_invalid() {
    let m = stock(&[]).when(restock(0)).then_invalid("quantity");
    assert!(m.contains("positive"), "{m}");
    stock(&[restocked(1)])
        .when(restock(0))
        .then_invalid("quantity");
}

#[test]
fn restocks_are_overflow_checked_over_available_and_reserved() {
    let e = stock(&[restocked(u64::MAX - 10)])
        .when(restock(11))
        .then_error("stock_overflow");
    assert_eq!(e.refusal(), Refusal::Rule);
    assert_eq!(
        e,
        InventoryError::StockOverflow {
            available: u64::MAX - 10,
            reserved: 0,
            quantity: 11,
        }
    );
    // Reserved units count too: they come back on release.
    let history = [restocked(u64::MAX - 10), reserved("o-1", 5)];
    stock(&history)
        .when(restock(11))
        .then_error("stock_overflow");
    stock(&history)
        .when(restock(u64::MAX))
        .then_error("stock_overflow");
    let state = stock(&history).when(restock(10)).then(&[restocked(10)]);
    assert_eq!(state.available + state.reserved, u64::MAX);
    // ...and then a release can't overflow.
    let state = fold(state, &[released("o-1", 5)]);
    assert_eq!((state.available, state.reserved), (u64::MAX, 0));
}

// ---------------------------------------------------------------------------------------------
// Inventory: reserve
// ---------------------------------------------------------------------------------------------

#[test]
fn reserving_within_the_stock_moves_units_aside() {
    let state = stock(&[restocked(10)])
        .when(reserve("o-1", 4))
        .then(&[reserved("o-1", 4)]);
    assert_eq!((state.available, state.reserved), (6, 4));
    assert_eq!(state.reservations, BTreeMap::from([("o-1".into(), 4)]));

    // Exactly what is available.
    let state = stock(&[restocked(10), reserved("o-1", 4)])
        .when(reserve("o-2", 6))
        .then(&[reserved("o-2", 6)]);
    assert_eq!((state.available, state.reserved), (0, 10));
    assert_eq!(state.reservations.len(), 2);
}

#[test]
fn reserving_a_sku_never_restocked_is_rejected_as_an_event() {
    let state =
        stock(&[])
            .when(reserve("o-1", 1))
            .then(&[refused("o-1", 1, "sku never restocked")]);
    // The rejection is recorded, but the sku still does not exist for clients.
    assert!(!state.exists());
    assert_eq!(state, Inventory::default());
}

#[test]
fn reserving_more_than_available_is_rejected_as_an_event() {
    let state = stock(&[restocked(3)])
        .when(reserve("o-1", 4))
        .then(&[refused(
            "o-1",
            4,
            "insufficient stock: 3 available, 4 requested",
        )]);
    assert_eq!((state.available, state.reserved), (3, 0));
    assert!(state.reservations.is_empty());

    // Other orders' reservations are not available.
    stock(&[restocked(10), reserved("o-1", 8)])
        .when(reserve("o-2", 3))
        .then(&[refused(
            "o-2",
            3,
            "insufficient stock: 2 available, 3 requested",
        )]);
    // Nothing available at all.
    stock(&[restocked(2), reserved("o-1", 2)])
        .when(reserve("o-2", 1))
        .then(&[refused(
            "o-2",
            1,
            "insufficient stock: 0 available, 1 requested",
        )]);
}

#[test]
fn reserving_again_for_an_order_changes_nothing() {
    let history = [restocked(10), reserved("o-1", 4)];
    // The same, another quantity, even one that would not fit: the order holds its units.
    for quantity in [4, 1, 100] {
        let state = stock(&history)
            .when(reserve("o-1", quantity))
            .then_nothing();
        assert_eq!((state.available, state.reserved), (6, 4));
    }
}

#[test]
fn after_a_rejection_or_a_release_an_order_may_reserve_again() {
    // Nothing is held after a rejection: a later restock lets a repeat through.
    stock(&[refused("o-1", 4, "sku never restocked"), restocked(5)])
        .when(reserve("o-1", 4))
        .then(&[reserved("o-1", 4)]);
    stock(&[restocked(5), reserved("o-1", 4), released("o-1", 4)])
        .when(reserve("o-1", 4))
        .then(&[reserved("o-1", 4)]);
}

#[test]
fn reserve_and_release_are_never_refused() {
    let histories: [&[InventoryEvent]; 4] = [
        &[],
        &[refused("o-1", 1, "sku never restocked")],
        &[restocked(1)],
        &[restocked(1), reserved("o-1", 1)],
    ];
    for history in histories {
        for command in [
            reserve("o-1", 1),
            reserve("o-2", 1),
            reserve("o-1", u64::MAX),
            release("o-1"),
            release("o-2"),
        ] {
            let then = stock(history).when(command.clone());
            assert!(then.outcome().is_ok(), "{command:?} after {history:?}");
        }
    }
}

#[test]
fn reserve_and_release_are_validated() {
    let m = stock(&[restocked(5)])
        .when(reserve("o-1", 0))
        .then_invalid("quantity");
    assert!(m.contains("positive"), "{m}");
    for bad in ["", "o 1", "o/1", "ö", &"o".repeat(129)] {
        stock(&[restocked(5)])
            .when(reserve(bad, 1))
            .then_invalid("order");
        stock(&[restocked(5)])
            .when(release(bad))
            .then_invalid("order");
    }
    for good in ["o-1", "A.b_c:d-9", &"o".repeat(128)] {
        assert_eq!(Inventory::validate(&reserve(good, 1)), Ok(()));
        assert_eq!(Inventory::validate(&release(good)), Ok(()));
    }
}

// ---------------------------------------------------------------------------------------------
// Inventory: release
// ---------------------------------------------------------------------------------------------

#[test]
fn releasing_gives_the_order_units_back() {
    let state = stock(&[restocked(10), reserved("o-1", 4), reserved("o-2", 3)])
        .when(release("o-1"))
        .then(&[released("o-1", 4)]);
    assert_eq!((state.available, state.reserved), (7, 3));
    assert_eq!(state.reservations, BTreeMap::from([("o-2".into(), 3)]));
}

#[test]
fn releasing_what_is_not_held_changes_nothing() {
    stock(&[]).when(release("o-1")).then_nothing();
    stock(&[restocked(10)]).when(release("o-1")).then_nothing();
    stock(&[restocked(10), reserved("o-2", 1)])
        .when(release("o-1"))
        .then_nothing();
    // A repeat.
    let state = stock(&[restocked(10), reserved("o-1", 4), released("o-1", 4)])
        .when(release("o-1"))
        .then_nothing();
    assert_eq!((state.available, state.reserved), (10, 0));
}

// ---------------------------------------------------------------------------------------------
// Inventory: evolve, events, view, JSON
// ---------------------------------------------------------------------------------------------

#[test]
fn evolve_keeps_every_unit_accounted_for() {
    let history = [
        restocked(10),
        reserved("o-1", 3),
        refused("o-2", 8, "insufficient stock: 7 available, 8 requested"),
        reserved("o-3", 7),
        released("o-1", 3),
        restocked(2),
    ];
    let mut state = Inventory::default();
    let mut seen = Vec::new();
    for e in &history {
        state.evolve(e);
        assert_eq!(
            state.available + state.reserved,
            history[..=seen.len()]
                .iter()
                .map(|e| match e {
                    InventoryEvent::Restocked { quantity } => *quantity,
                    _ => 0,
                })
                .sum::<u64>()
        );
        assert_eq!(state.reserved, state.reservations.values().sum::<u64>());
        seen.push((state.available, state.reserved));
    }
    assert_eq!(seen, [(10, 0), (7, 3), (7, 3), (0, 10), (3, 7), (5, 7)]);
}

#[test]
fn evolve_never_goes_below_zero_even_on_a_corrupt_history() {
    // decide never records these; a stored history that has them must still fold.
    let state = fold(
        Inventory::default(),
        &[restocked(1), reserved("o-1", 5), released("o-2", 9)],
    );
    assert_eq!((state.available, state.reserved), (9, 0));
}

#[test]
fn inventory_events_round_trip_through_their_data() {
    let cases = [
        (restocked(5), RESTOCKED, json!({"quantity": 5})),
        (
            reserved("o-1", 2),
            STOCK_RESERVED,
            json!({"order": "o-1", "quantity": 2}),
        ),
        (
            refused("o-1", 2, "sku never restocked"),
            RESERVATION_REJECTED,
            json!({"order": "o-1", "quantity": 2, "reason": "sku never restocked"}),
        ),
        (
            released("o-1", 2),
            STOCK_RELEASED,
            json!({"order": "o-1", "quantity": 2}),
        ),
    ];
    let schema = Inventory::schema();
    for (e, t, data) in cases {
        assert_eq!(e.event_type(), t);
        assert_eq!(e.to_data(), data, "{t}");
        assert_eq!(InventoryEvent::from_data(t, &data).unwrap(), e);
        assert_eq!(InventoryEvent::from_json(t, &data.to_string()).unwrap(), e);
        assert_eq!(schema.current_version(t), Some(1), "{t}");
    }
    assert_eq!(
        (
            RESTOCKED,
            STOCK_RESERVED,
            RESERVATION_REJECTED,
            STOCK_RELEASED
        ),
        (
            "Restocked",
            "StockReserved",
            "ReservationRejected",
            "StockReleased"
        )
    );
    assert_eq!(schema.event_types().count(), 4);
    let err = InventoryEvent::from_data("Stolen", &json!({})).unwrap_err();
    assert!(err.contains("Stolen"), "{err}");
    assert!(InventoryEvent::from_data(STOCK_RESERVED, &json!({"quantity": 1})).is_err());
    assert!(InventoryEvent::from_data(RESTOCKED, &json!({"quantity": -1})).is_err());
    assert!(InventoryEvent::from_json(RESTOCKED, "{not json").is_err());
}

#[test]
fn inventory_view_has_the_documented_shape() {
    let state = fold(Inventory::default(), &[restocked(10), reserved("o-1", 4)]);
    let v = serde_json::to_value(state.view("sku-1", 2)).unwrap();
    assert_eq!(
        v,
        json!({"sku": "sku-1", "available": 6, "reserved": 4, "version": 2})
    );
    assert_eq!(keys(&v), ["available", "reserved", "sku", "version"]);
    let max = fold(Inventory::default(), &[restocked(u64::MAX)]);
    let v = serde_json::to_value(max.view("s", 1)).unwrap();
    assert_eq!(v["available"].as_u64(), Some(u64::MAX));
}

fn parse_inventory(v: Value) -> Result<InventoryCommand, serde_json::Error> {
    serde_json::from_value(v)
}

#[test]
fn inventory_command_json() {
    assert_eq!(
        parse_inventory(json!({"type": "Restock", "quantity": 3})).unwrap(),
        restock(3)
    );
    assert_eq!(
        parse_inventory(json!({"type": "Reserve", "order": "o-1", "quantity": 3})).unwrap(),
        reserve("o-1", 3)
    );
    assert_eq!(
        parse_inventory(json!({"type": "Release", "order": "o-1"})).unwrap(),
        release("o-1")
    );
    for c in [restock(1), reserve("o", 2), release("o")] {
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(parse_inventory(v).unwrap(), c);
    }
    for v in [
        json!({"type": "Restock", "quantity": 3, "note": "x"}),
        json!({"type": "Release", "order": "o-1", "quantity": 1}),
    ] {
        let err = parse_inventory(v.clone()).expect_err("an unknown field");
        assert!(err.to_string().contains("unknown field"), "{v}: {err}");
    }
    for v in [
        json!({"type": "Steal", "quantity": 3}),
        json!({"type": "restock", "quantity": 3}),
        json!({"quantity": 3}),
        json!({"type": "Restock", "quantity": -3}),
        json!({"type": "Restock", "quantity": 1.5}),
        json!({"type": "Restock"}),
        json!({"type": "Reserve", "quantity": 1}),
    ] {
        assert!(parse_inventory(v.clone()).is_err(), "{v} must not parse");
    }
}

#[test]
fn only_restock_is_for_clients() {
    assert_eq!(Inventory::INTERNAL_COMMANDS, ["Reserve", "Release"]);
    assert_eq!(Inventory::TYPE, "inventory");
    assert_eq!(Inventory::STATE_VERSION, 1);
    let schema = serde_json::to_string(&schema_for!(InventoryCommand)).unwrap();
    for fragment in [
        r#""const":"Restock""#,
        r#""minimum":1"#,
        "^[A-Za-z0-9._:-]{1,128}$",
    ] {
        assert!(schema.contains(fragment), "{fragment} in {schema}");
    }
}

// ---------------------------------------------------------------------------------------------
// Order: the state machine
// ---------------------------------------------------------------------------------------------

fn two_lines() -> [Line; 2] {
    [line("sku-a", 1), line("sku-b", 2)]
}

fn c1_placed() -> OrderEvent {
    placed("c-1", &two_lines())
}

#[test]
fn placing_an_order() {
    assert!(!Order::default().exists());
    let state = order(&[])
        .when(place("c-1", &two_lines()))
        .then(&[c1_placed()]);
    assert!(state.exists());
    assert_eq!(
        state,
        Order {
            status: OrderStatus::Placed,
            customer: "c-1".into(),
            lines: two_lines().to_vec(),
            reason: None,
        }
    );
}

#[test]
fn an_order_is_placed_once() {
    for history in [
        vec![c1_placed()],
        vec![c1_placed(), OrderEvent::Confirmed],
        vec![c1_placed(), rejected("sku-a: gone")],
    ] {
        let e = order(&history)
            .when(place("c-2", &[line("x", 1)]))
            .then_error("order_already_placed");
        assert_eq!(e, OrderError::AlreadyPlaced);
        assert_eq!(e.refusal(), Refusal::Rule);
    }
}

#[test]
fn commands_on_an_unplaced_order_are_not_found() {
    for command in [OrderCommand::Confirm {}, reject("why")] {
        let e = order(&[]).when(command).then_error("order_not_found");
        assert_eq!(e, OrderError::NotPlaced);
        assert_eq!(e.refusal(), Refusal::NotFound);
    }
}

#[test]
fn confirming() {
    let state = order(&[c1_placed()])
        .when(OrderCommand::Confirm {})
        .then(&[OrderEvent::Confirmed]);
    assert_eq!(state.status, OrderStatus::Confirmed);
    // A repeat changes nothing.
    order(&[c1_placed(), OrderEvent::Confirmed])
        .when(OrderCommand::Confirm {})
        .then_nothing();
    // A rejected order stays rejected.
    let e = order(&[c1_placed(), rejected("sku-a: gone")])
        .when(OrderCommand::Confirm {})
        .then_error("order_rejected");
    assert_eq!(e, OrderError::Rejected);
    assert_eq!(e.refusal(), Refusal::Rule);
}

#[test]
fn rejecting() {
    let state = order(&[c1_placed()])
        .when(reject(
            "sku-b: insufficient stock: 1 available, 2 requested",
        ))
        .then(&[rejected(
            "sku-b: insufficient stock: 1 available, 2 requested",
        )]);
    assert_eq!(state.status, OrderStatus::Rejected);
    assert_eq!(
        state.reason.as_deref(),
        Some("sku-b: insufficient stock: 1 available, 2 requested")
    );
    // A repeat changes nothing, whatever its reason: the first one stays.
    let state = order(&[c1_placed(), rejected("first")])
        .when(reject("second"))
        .then_nothing();
    assert_eq!(state.reason.as_deref(), Some("first"));
    // A confirmed order stays confirmed.
    let e = order(&[c1_placed(), OrderEvent::Confirmed])
        .when(reject("late"))
        .then_error("order_confirmed");
    assert_eq!(e, OrderError::Confirmed);
    assert_eq!(e.refusal(), Refusal::Rule);
}

#[test]
fn rejections_need_a_reason() {
    for bad in [String::new(), "  ".into(), "x".repeat(1025)] {
        order(&[c1_placed()])
            .when(reject(&bad))
            .then_invalid("reason");
    }
    order(&[c1_placed()])
        .when(reject(&"x".repeat(1024)))
        .then(&[rejected(&"x".repeat(1024))]);
}

// ---------------------------------------------------------------------------------------------
// Order: validate
// ---------------------------------------------------------------------------------------------

#[test]
fn customers_must_be_1_to_128_printable_characters() {
    for customer in ["", " ", " \t "] {
        order(&[])
            .when(place(customer, &two_lines()))
            .then_invalid("customer");
    }
    let m = order(&[])
        .when(place(&"c".repeat(129), &two_lines()))
        .then_invalid("customer");
    assert!(m.contains("128"), "{m}");
    order(&[])
        .when(place(&"é".repeat(129), &two_lines()))
        .then_invalid("customer");
    for customer in ["c\n1", "c\u{0}", "\u{7f}"] {
        let m = order(&[])
            .when(place(customer, &two_lines()))
            .then_invalid("customer");
        assert!(m.contains("control"), "{customer:?}: {m}");
    }
    for customer in ["c".repeat(128), "é".repeat(128), "Zoë O'Brien".into()] {
        order(&[])
            .when(place(&customer, &two_lines()))
            .then(&[placed(&customer, &two_lines())]);
    }
}

#[test]
fn an_order_has_1_to_50_lines() {
    let m = order(&[]).when(place("c-1", &[])).then_invalid("lines");
    assert!(m.contains("at least 1"), "{m}");
    let lines = |n: usize| -> Vec<Line> { (0..n).map(|i| line(&format!("s-{i}"), 1)).collect() };
    order(&[])
        .when(place("c-1", &lines(51)))
        .then_invalid("lines: at most 50");
    order(&[])
        .when(place("c-1", &lines(500)))
        .then_invalid("lines: at most 50");
    assert_eq!(MAX_LINES, 50);
    order(&[])
        .when(place("c-1", &lines(50)))
        .then(&[placed("c-1", &lines(50))]);
    order(&[])
        .when(place("c-1", &lines(1)))
        .then(&[placed("c-1", &lines(1))]);
}

#[test]
fn line_quantities_are_positive() {
    order(&[])
        .when(place("c-1", &[line("a", 1), line("b", 0)]))
        .then_invalid("lines[1].quantity must be a positive integer");
    order(&[])
        .when(place("c-1", &[line("a", 0)]))
        .then_invalid("lines[0].quantity");
}

#[test]
fn line_skus_are_valid_ids() {
    for bad in ["", "a b", "a/b", "ü", &"s".repeat(129)] {
        let m = order(&[])
            .when(place("c-1", &[line("a", 1), line("b", 1), line(bad, 1)]))
            .then_invalid("lines[2].sku");
        assert!(m.contains("id"), "{bad:?}: {m}");
    }
    let sku = "S.k_u:1-x".to_owned() + &"9".repeat(119);
    assert_eq!(sku.len(), 128);
    order(&[])
        .when(place("c-1", &[line(&sku, 1)]))
        .then(&[placed("c-1", &[line(&sku, 1)])]);
}

#[test]
fn line_skus_are_distinct() {
    let m = order(&[])
        .when(place("c-1", &[line("a", 1), line("b", 1), line("a", 2)]))
        .then_invalid(r#"lines: sku "a" appears twice"#);
    assert!(m.contains("lines[0]") && m.contains("lines[2]"), "{m}");
    // Case matters: ids are case-sensitive.
    order(&[])
        .when(place("c-1", &[line("a", 1), line("A", 1)]))
        .then(&[placed("c-1", &[line("a", 1), line("A", 1)])]);
}

#[test]
fn confirm_needs_nothing_to_be_valid() {
    assert_eq!(Order::validate(&OrderCommand::Confirm {}), Ok(()));
}

// ---------------------------------------------------------------------------------------------
// Order: JSON, events, view
// ---------------------------------------------------------------------------------------------

fn parse_order(v: Value) -> Result<OrderCommand, serde_json::Error> {
    serde_json::from_value(v)
}

#[test]
fn order_command_json() {
    assert_eq!(
        parse_order(json!({
            "type": "Place",
            "customer": "c-1",
            "lines": [{"sku": "sku-a", "quantity": 1}, {"sku": "sku-b", "quantity": 2}],
        }))
        .unwrap(),
        place("c-1", &two_lines())
    );
    assert_eq!(
        parse_order(json!({"type": "Confirm"})).unwrap(),
        OrderCommand::Confirm {}
    );
    assert_eq!(
        parse_order(json!({"type": "Reject", "reason": "r"})).unwrap(),
        reject("r")
    );
    for c in [
        place("c", &two_lines()),
        OrderCommand::Confirm {},
        reject("r"),
    ] {
        assert_eq!(parse_order(serde_json::to_value(&c).unwrap()).unwrap(), c);
    }
    for v in [
        json!({"type": "Place", "customer": "c", "lines": [], "note": 1}),
        json!({"type": "Place", "customer": "c", "lines": [{"sku": "a", "quantity": 1, "price": 5}]}),
        json!({"type": "Confirm", "by": "me"}),
        json!({"type": "Reject", "reason": "r", "sku": "a"}),
    ] {
        let err = parse_order(v.clone()).expect_err("an unknown field");
        assert!(err.to_string().contains("unknown field"), "{v}: {err}");
    }
    for v in [
        json!({"type": "Cancel"}),
        json!({"type": "place", "customer": "c", "lines": []}),
        json!({"customer": "c", "lines": []}),
        json!({"type": "Place", "customer": "c"}),
        json!({"type": "Place", "lines": []}),
        json!({"type": "Place", "customer": "c", "lines": [{"sku": "a"}]}),
        json!({"type": "Place", "customer": "c", "lines": [{"sku": "a", "quantity": -1}]}),
        json!({"type": "Place", "customer": "c", "lines": [{"sku": 5, "quantity": 1}]}),
        json!({"type": "Place", "customer": "c", "lines": {"sku": "a", "quantity": 1}}),
        json!({"type": "Reject"}),
    ] {
        assert!(parse_order(v.clone()).is_err(), "{v} must not parse");
    }
}

#[test]
fn only_place_is_for_clients_and_its_schema_states_the_rules() {
    assert_eq!(Order::INTERNAL_COMMANDS, ["Confirm", "Reject"]);
    assert_eq!(Order::TYPE, "orders");
    assert_eq!(Order::STATE_VERSION, 1);
    let schema = serde_json::to_string(&schema_for!(OrderCommand)).unwrap();
    for fragment in [
        r#""minItems":1"#,
        r#""maxItems":50"#,
        r#""minimum":1"#,
        r#""maxLength":128"#,
        r#""pattern":"^[A-Za-z0-9._:-]{1,128}$""#,
        r#""additionalProperties":false"#,
    ] {
        assert!(schema.contains(fragment), "{fragment} in {schema}");
    }
}

#[test]
fn order_events_round_trip_through_their_data() {
    let cases = [
        (
            c1_placed(),
            ORDER_PLACED,
            json!({"customer": "c-1", "lines": [{"sku": "sku-a", "quantity": 1}, {"sku": "sku-b", "quantity": 2}]}),
        ),
        (OrderEvent::Confirmed, ORDER_CONFIRMED, json!({})),
        (rejected("why"), ORDER_REJECTED, json!({"reason": "why"})),
    ];
    let schema = Order::schema();
    for (e, t, data) in cases {
        assert_eq!(e.event_type(), t);
        assert_eq!(e.to_data(), data, "{t}");
        assert_eq!(OrderEvent::from_data(t, &data).unwrap(), e);
        assert_eq!(OrderEvent::from_json(t, &data.to_string()).unwrap(), e);
        assert_eq!(schema.current_version(t), Some(1), "{t}");
    }
    assert_eq!(
        (ORDER_PLACED, ORDER_CONFIRMED, ORDER_REJECTED),
        ("OrderPlaced", "OrderConfirmed", "OrderRejected")
    );
    assert_eq!(schema.event_types().count(), 3);
    assert!(OrderEvent::from_data("OrderShipped", &json!({})).is_err());
    assert!(OrderEvent::from_data(ORDER_PLACED, &json!({"customer": "c"})).is_err());
    assert!(OrderEvent::from_data(ORDER_REJECTED, &json!({})).is_err());
}

#[test]
fn order_view_has_the_documented_shape() {
    let state = fold(Order::default(), &[c1_placed()]);
    let v = serde_json::to_value(state.view("o-1", 1)).unwrap();
    assert_eq!(
        v,
        json!({
            "id": "o-1",
            "status": "placed",
            "customer": "c-1",
            "lines": [{"sku": "sku-a", "quantity": 1}, {"sku": "sku-b", "quantity": 2}],
            "reason": null,
            "version": 1,
        })
    );
    assert_eq!(
        keys(&v),
        ["customer", "id", "lines", "reason", "status", "version"]
    );
    let confirmed = fold(state.clone(), &[OrderEvent::Confirmed]);
    let v = serde_json::to_value(confirmed.view("o-1", 2)).unwrap();
    assert_eq!(
        (&v["status"], &v["reason"]),
        (&json!("confirmed"), &Value::Null)
    );
    let refused = fold(state, &[rejected("sku-a: sku never restocked")]);
    let v = serde_json::to_value(refused.view("o-1", 2)).unwrap();
    assert_eq!(v["status"], json!("rejected"));
    assert_eq!(v["reason"], json!("sku-a: sku never restocked"));
    assert_eq!(v["version"], json!(2));
    assert_eq!(
        keys(&v),
        ["customer", "id", "lines", "reason", "status", "version"]
    );
}

// ---------------------------------------------------------------------------------------------
// The orders-by-customer projection, and the domain
// ---------------------------------------------------------------------------------------------

#[test]
fn orders_by_customer_describes_itself() {
    let p = OrdersByCustomer;
    assert_eq!(p.name(), "orders_by_customer");
    assert_eq!(OrdersByCustomer::NAME, p.name());
    assert_eq!(p.aggregate_type(), Order::TYPE);
    assert_eq!(p.indexes(), &["customer"]);
}

#[test]
fn orders_by_customer_keeps_each_order_view() {
    let mut doc: Option<Value> = None;
    let mut docs = Vec::new();
    for env in [
        ord("o-9", 1, &c1_placed()),
        ord("o-9", 2, &rejected("sku-b: sku never restocked")),
    ] {
        let next = OrdersByCustomer.apply(doc.as_ref(), &env).unwrap();
        docs.push(next.clone());
        doc = Some(next);
    }
    let state = fold(Order::default(), &[c1_placed()]);
    assert_eq!(docs[0], serde_json::to_value(state.view("o-9", 1)).unwrap());
    assert_eq!(
        docs[1],
        json!({
            "id": "o-9",
            "status": "rejected",
            "customer": "c-1",
            "lines": [{"sku": "sku-a", "quantity": 1}, {"sku": "sku-b", "quantity": 2}],
            "reason": "sku-b: sku never restocked",
            "version": 2,
        })
    );
    // Found by customer.
    assert_eq!(
        index_values(OrdersByCustomer.indexes(), &docs[1]),
        [("customer".to_owned(), "c-1".to_owned())]
    );
    let confirmed = OrdersByCustomer
        .apply(Some(&docs[0]), &ord("o-9", 2, &OrderEvent::Confirmed))
        .unwrap();
    assert_eq!(confirmed["status"], json!("confirmed"));
}

#[test]
fn orders_by_customer_refuses_what_it_cannot_read() {
    let err = OrdersByCustomer
        .apply(
            None,
            &envelope("orders", "o-1", 1, "OrderShipped", json!({})),
        )
        .unwrap_err();
    assert!(err.contains("OrderShipped"), "{err}");
    let err = OrdersByCustomer
        .apply(
            Some(&json!({"status": 5})),
            &ord("o-1", 2, &OrderEvent::Confirmed),
        )
        .unwrap_err();
    assert!(err.contains("stored document"), "{err}");
}

#[test]
fn the_domain_registers_everything_and_checks() {
    let d = domain();
    assert_eq!(d.check(), Ok(()));
    assert_eq!(
        d.aggregate_types().collect::<Vec<_>>(),
        ["inventory", "orders"]
    );
    assert_eq!(
        d.read_model_names(),
        ["inventory_state", "orders_state", "orders_by_customer"]
    );
    assert_eq!(d.reaction_names().collect::<Vec<_>>(), ["order_fulfilment"]);
}

// ---------------------------------------------------------------------------------------------
// The fulfilment reaction
// ---------------------------------------------------------------------------------------------

const O: &str = "o-1";

/// `o-1` placed by `c-1` with three lines.
fn three_lines() -> [Line; 3] {
    [line("sku-a", 1), line("sku-b", 2), line("sku-c", 3)]
}
fn o1_placed() -> EventEnvelope {
    ord(O, 1, &placed("c-1", &three_lines()))
}
/// The inventory `sku`'s answer to `o-1`'s reservation.
fn o1_reserved(sku: &str, quantity: u64) -> EventEnvelope {
    inv(sku, 2, &reserved(O, quantity))
}
fn o1_refused(sku: &str, quantity: u64, reason: &str) -> EventEnvelope {
    inv(sku, 2, &refused(O, quantity, reason))
}

#[test]
fn fulfilment_describes_itself() {
    assert_eq!(Fulfilment::NAME, "order_fulfilment");
    assert_eq!(
        Fulfilment.subscriptions(),
        [
            ("orders", "OrderPlaced"),
            ("inventory", "StockReserved"),
            ("inventory", "ReservationRejected"),
        ]
    );
}

#[test]
fn the_instance_is_the_order() {
    assert_eq!(Fulfilment.instance(&o1_placed()).as_deref(), Some(O));
    assert_eq!(
        Fulfilment.instance(&o1_reserved("sku-a", 1)).as_deref(),
        Some(O)
    );
    assert_eq!(
        Fulfilment
            .instance(&o1_refused("sku-a", 1, "sku never restocked"))
            .as_deref(),
        Some(O)
    );
    assert_eq!(Fulfilment.instance(&inv("sku-a", 1, &restocked(1))), None);
    assert_eq!(
        Fulfilment.instance(&envelope("accounts", "a-1", 1, "Deposited", json!({}))),
        None
    );
}

#[test]
fn a_placed_order_reserves_each_line() {
    let state = given_reaction(&Fulfilment).when(&o1_placed()).then(&[
        reserve_to("sku-a", O, 1),
        reserve_to("sku-b", O, 2),
        reserve_to("sku-c", O, 3),
    ]);
    assert_eq!(state.lines, three_lines());
    assert_eq!(
        state,
        FulfilmentState {
            lines: three_lines().to_vec(),
            ..FulfilmentState::default()
        }
    );
}

#[test]
fn the_last_reservation_confirms_the_order_once() {
    given_reaction(&Fulfilment)
        .after(&[o1_placed()])
        .when(&o1_reserved("sku-b", 2))
        .then(&[]);
    let state = given_reaction(&Fulfilment)
        .after(&[
            o1_placed(),
            o1_reserved("sku-b", 2),
            o1_reserved("sku-c", 3),
        ])
        .when(&o1_reserved("sku-a", 1))
        .then(&[confirm_to(O)]);
    assert!(state.confirmed);
    assert_eq!(state.reserved.len(), 3);
    // A repeat (under another version: the step drops true redeliveries) confirms nothing more.
    given_reaction(&Fulfilment)
        .state(state)
        .when(&inv("sku-a", 3, &reserved(O, 1)))
        .then(&[]);
}

#[test]
fn a_refusal_rejects_the_order_and_releases_its_reservations() {
    let state = given_reaction(&Fulfilment)
        .after(&[
            o1_placed(),
            o1_reserved("sku-a", 1),
            o1_reserved("sku-c", 3),
        ])
        .when(&o1_refused(
            "sku-b",
            2,
            "insufficient stock: 1 available, 2 requested",
        ))
        .then(&[
            reject_to(O, "sku-b: insufficient stock: 1 available, 2 requested"),
            release_to("sku-a", O),
            release_to("sku-c", O),
        ]);
    assert_eq!(
        state.rejected.as_deref(),
        Some("sku-b: insufficient stock: 1 available, 2 requested")
    );
    assert!(!state.confirmed);
}

#[test]
fn a_refusal_with_nothing_reserved_only_rejects() {
    given_reaction(&Fulfilment)
        .after(&[o1_placed()])
        .when(&o1_refused("sku-a", 1, "sku never restocked"))
        .then(&[reject_to(O, "sku-a: sku never restocked")]);
}

#[test]
fn a_reservation_after_the_rejection_is_released() {
    let history = [
        o1_placed(),
        o1_reserved("sku-a", 1),
        o1_refused("sku-b", 2, "sku never restocked"),
    ];
    let state = given_reaction(&Fulfilment)
        .after(&history)
        .when(&o1_reserved("sku-c", 3))
        .then(&[release_to("sku-c", O)]);
    assert!(
        !state.confirmed,
        "every line is reserved but b's refusal came first"
    );
    // A second refusal changes nothing: the order is rejected once.
    given_reaction(&Fulfilment)
        .after(&history)
        .when(&o1_refused("sku-c", 3, "sku never restocked"))
        .then(&[]);
}

#[test]
fn a_refusal_after_the_confirmation_changes_nothing() {
    // Impossible with one reservation per line, but an instance must not both confirm and
    // reject.
    let mut state = FulfilmentState {
        lines: vec![line("sku-a", 1)],
        ..Default::default()
    };
    state.reserved.insert("sku-a".into());
    state.confirmed = true;
    given_reaction(&Fulfilment)
        .state(state)
        .when(&o1_refused("sku-a", 1, "sku never restocked"))
        .then(&[]);
}

#[test]
fn reservations_heard_of_before_the_placement_are_counted() {
    // b's reservation arrives first: kept, not confirmed (no lines known yet).
    let state = given_reaction(&Fulfilment)
        .when(&o1_reserved("sku-b", 2))
        .then(&[]);
    assert_eq!(state.reserved, BTreeSet::from(["sku-b".to_owned()]));
    assert!(!state.confirmed);
    // The placement reserves the other lines only.
    given_reaction(&Fulfilment)
        .after(&[o1_reserved("sku-b", 2)])
        .when(&o1_placed())
        .then(&[reserve_to("sku-a", O, 1), reserve_to("sku-c", O, 3)]);
    // And the rest confirms.
    given_reaction(&Fulfilment)
        .after(&[
            o1_reserved("sku-b", 2),
            o1_placed(),
            o1_reserved("sku-a", 1),
        ])
        .when(&o1_reserved("sku-c", 3))
        .then(&[confirm_to(O)]);
    // Every line reserved before the placement: it confirms at once.
    let state = given_reaction(&Fulfilment)
        .after(&[
            o1_reserved("sku-c", 3),
            o1_reserved("sku-a", 1),
            o1_reserved("sku-b", 2),
        ])
        .when(&o1_placed())
        .then(&[confirm_to(O)]);
    assert!(state.confirmed);
}

#[test]
fn a_refusal_heard_of_before_the_placement_rejects_and_nothing_is_reserved() {
    let state = given_reaction(&Fulfilment)
        .after(&[o1_reserved("sku-a", 1)])
        .when(&o1_refused("sku-c", 3, "sku never restocked"))
        .then(&[
            reject_to(O, "sku-c: sku never restocked"),
            release_to("sku-a", O),
        ]);
    given_reaction(&Fulfilment)
        .state(state)
        .when(&o1_placed())
        .then(&[]);
}

#[test]
fn reservations_for_skus_the_order_does_not_list_are_released() {
    // Heard of before the placement.
    given_reaction(&Fulfilment)
        .after(&[o1_reserved("sku-z", 9)])
        .when(&o1_placed())
        .then(&[
            reserve_to("sku-a", O, 1),
            reserve_to("sku-b", O, 2),
            reserve_to("sku-c", O, 3),
            release_to("sku-z", O),
        ]);
    // After it.
    given_reaction(&Fulfilment)
        .after(&[o1_placed()])
        .when(&o1_reserved("sku-z", 9))
        .then(&[release_to("sku-z", O)]);
    // A refusal there does not reject the order.
    given_reaction(&Fulfilment)
        .after(&[o1_placed()])
        .when(&o1_refused("sku-z", 9, "sku never restocked"))
        .then(&[]);
}

#[test]
fn very_long_reasons_are_cut_to_what_the_order_accepts() {
    let cut = format!("sku-a: {}", "r".repeat(1024 - "sku-a: ".len()));
    given_reaction(&Fulfilment)
        .after(&[o1_placed()])
        .when(&o1_refused("sku-a", 1, &"r".repeat(5000)))
        .then(&[reject_to(O, &cut)]);
    assert_eq!(Order::validate(&reject(&cut)), Ok(()));
}

#[test]
fn events_it_does_not_subscribe_to_are_refused() {
    given_reaction(&Fulfilment)
        .when(&ord(O, 2, &OrderEvent::Confirmed))
        .then_error("does not react");
    given_reaction(&Fulfilment)
        .when(&inv("sku-a", 1, &restocked(1)))
        .then_error("does not react");
    given_reaction(&Fulfilment)
        .when(&envelope("accounts", "a-1", 1, "Deposited", json!({})))
        .then_error("does not react");
    // Data that does not decode names the event.
    let m = given_reaction(&Fulfilment)
        .when(&envelope(
            "inventory",
            "sku-a",
            4,
            STOCK_RESERVED,
            json!({"order": O}),
        ))
        .then_error("inventory/sku-a v4");
    assert!(m.contains("quantity"), "{m}");
}

// ---------------------------------------------------------------------------------------------
// The reaction under every delivery order
// ---------------------------------------------------------------------------------------------

/// Every ordering of `0..n`.
fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for at in 0..=p.len() {
            let mut q = p.clone();
            q.insert(at, n - 1);
            out.push(q);
        }
    }
    out
}

/// The commands the reaction issues for `events` delivered in `order`, one instance.
fn deliver(events: &[EventEnvelope], order: &[usize]) -> (Vec<Dispatch>, FulfilmentState) {
    let mut state = FulfilmentState::default();
    let mut out = Vec::new();
    for &i in order {
        out.extend(Fulfilment.react(&mut state, &events[i]).expect("react"));
    }
    (out, state)
}

/// A dispatch's (aggregate type, aggregate id, command): the reaction only sends commands.
fn parts(d: &Dispatch) -> (&str, &str, &Value) {
    match d {
        Dispatch::Command {
            aggregate_type,
            aggregate_id,
            command,
        } => (aggregate_type, aggregate_id, command),
        Dispatch::Call { port, .. } => panic!("the fulfilment calls no port, not {port}"),
    }
}

fn command_type(d: &Dispatch) -> &str {
    parts(d).2["type"].as_str().expect("a tagged command")
}

#[test]
fn every_delivery_order_of_a_fully_reserved_order_confirms_it_once() {
    let events = [
        o1_placed(),
        o1_reserved("sku-a", 1),
        o1_reserved("sku-b", 2),
        o1_reserved("sku-c", 3),
    ];
    let orders = permutations(events.len());
    assert_eq!(orders.len(), 24);
    for order in orders {
        let (out, state) = deliver(&events, &order);
        let confirms: Vec<_> = out
            .iter()
            .filter(|d| command_type(d) == "Confirm")
            .collect();
        assert_eq!(confirms, [&confirm_to(O)], "{order:?}: {out:?}");
        assert_eq!(
            out.last(),
            Some(&confirm_to(O)),
            "{order:?}: confirm comes last"
        );
        assert!(
            out.iter()
                .all(|d| matches!(command_type(d), "Reserve" | "Confirm")),
            "{order:?}: {out:?}"
        );
        // A reserve only for lines not yet heard of as reserved when the placement came.
        let before: BTreeSet<&str> = order
            .iter()
            .take_while(|&&i| i != 0)
            .map(|&i| events[i].aggregate_id.as_str())
            .collect();
        let reserves: BTreeSet<&str> = out
            .iter()
            .filter(|d| command_type(d) == "Reserve")
            .map(|d| parts(d).1)
            .collect();
        let expected: BTreeSet<&str> = ["sku-a", "sku-b", "sku-c"]
            .into_iter()
            .filter(|s| !before.contains(s))
            .collect();
        assert_eq!(reserves, expected, "{order:?}");
        assert!(state.confirmed && state.rejected.is_none());
    }
}

#[test]
fn every_delivery_order_of_a_refused_order_rejects_it_and_releases_every_reservation() {
    let events = [
        o1_placed(),
        o1_reserved("sku-a", 1),
        o1_refused("sku-b", 2, "insufficient stock: 0 available, 2 requested"),
        o1_reserved("sku-c", 3),
    ];
    for order in permutations(events.len()) {
        let (out, state) = deliver(&events, &order);
        assert!(
            !out.iter().any(|d| command_type(d) == "Confirm"),
            "{order:?}: no confirm for a refused order: {out:?}"
        );
        let rejects: Vec<_> = out.iter().filter(|d| command_type(d) == "Reject").collect();
        assert_eq!(
            rejects,
            [&reject_to(
                O,
                "sku-b: insufficient stock: 0 available, 2 requested"
            )],
            "{order:?}"
        );
        let released: BTreeSet<&str> = out
            .iter()
            .filter(|d| command_type(d) == "Release")
            .map(|d| parts(d).1)
            .collect();
        assert_eq!(
            released,
            BTreeSet::from(["sku-a", "sku-c"]),
            "{order:?}: every reservation is released: {out:?}"
        );
        // Nothing is reserved once the rejection was issued.
        let reject_at = out
            .iter()
            .position(|d| command_type(d) == "Reject")
            .unwrap();
        assert!(
            out[reject_at..]
                .iter()
                .all(|d| command_type(d) != "Reserve"),
            "{order:?}: {out:?}"
        );
        assert!(!state.confirmed && state.rejected.is_some());
    }
}

// ---------------------------------------------------------------------------------------------
// Simulation: random interleavings of commands and deliveries, and the invariant at rest
// ---------------------------------------------------------------------------------------------

/// SplitMix64: a tiny deterministic generator, so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The aggregates and the reaction's instances in memory: commands run through
/// validate/decide/evolve, their events wait to be delivered to the reaction, its commands
/// wait to be run, and the next thing to happen is picked at random.
#[derive(Default)]
struct World {
    inventories: BTreeMap<String, (Inventory, u64)>,
    orders: BTreeMap<String, (Order, u64)>,
    instances: BTreeMap<String, FulfilmentState>,
    /// Events not yet delivered to the reaction.
    events: Vec<EventEnvelope>,
    /// Commands not yet run, and whether they may still be sent twice.
    commands: Vec<(Dispatch, bool)>,
    /// Units ever restocked, by sku.
    restocked: BTreeMap<String, u64>,
    /// Per order: for each reservation asked for, whether the inventory made it.
    outcomes: BTreeMap<String, Vec<bool>>,
    /// Reservations released.
    releases: usize,
}

impl World {
    fn run(&mut self, d: &Dispatch) {
        match parts(d).0 {
            "inventory" => {
                let command: InventoryCommand =
                    serde_json::from_value(parts(d).2.clone()).expect("an inventory command");
                Inventory::validate(&command).expect("valid");
                let (state, version) = self.inventories.entry(parts(d).1.to_owned()).or_default();
                let events = state
                    .decide(&command)
                    .unwrap_or_else(|e| panic!("{d:?}: {e}"));
                for e in events {
                    match &e {
                        InventoryEvent::Restocked { quantity } => {
                            *self.restocked.entry(parts(d).1.to_owned()).or_default() += quantity
                        }
                        InventoryEvent::Reserved { order, quantity } => {
                            assert!(state.available >= *quantity, "reserved more than available");
                            self.outcomes.entry(order.clone()).or_default().push(true);
                        }
                        InventoryEvent::ReservationRejected { order, .. } => {
                            self.outcomes.entry(order.clone()).or_default().push(false)
                        }
                        InventoryEvent::Released { .. } => self.releases += 1,
                    }
                    state.evolve(&e);
                    *version += 1;
                    self.events.push(inv(parts(d).1, *version, &e));
                }
                // Every unit is accounted for at every step: none lost, none made up.
                let total = self.restocked.get(parts(d).1).copied().unwrap_or(0);
                assert_eq!(state.available + state.reserved, total, "{}", parts(d).1);
                assert_eq!(state.reserved, state.reservations.values().sum::<u64>());
            }
            "orders" => {
                let command: OrderCommand =
                    serde_json::from_value(parts(d).2.clone()).expect("an order command");
                Order::validate(&command).unwrap_or_else(|m| panic!("{d:?}: {m}"));
                let (state, version) = self.orders.entry(parts(d).1.to_owned()).or_default();
                // The reaction never asks an order for what it would refuse.
                let events = state
                    .decide(&command)
                    .unwrap_or_else(|e| panic!("{d:?}: {e}"));
                for e in events {
                    state.evolve(&e);
                    *version += 1;
                    self.events.push(ord(parts(d).1, *version, &e));
                }
            }
            other => panic!("a command to {other}"),
        }
    }

    fn deliver(&mut self, event: &EventEnvelope) {
        let wanted = (event.aggregate_type.as_str(), event.event_type.as_str());
        if !Fulfilment.subscriptions().contains(&wanted) {
            return;
        }
        let instance = Fulfilment.instance(event).expect("an instance");
        let state = self.instances.entry(instance).or_default();
        let out = Fulfilment.react(state, event).expect("react");
        self.commands.extend(out.into_iter().map(|d| (d, true)));
    }

    /// Runs everything to rest, in an order `rng` picks; with `duplicates`, some commands are
    /// sent twice (as at-least-once delivery without idempotency keys would).
    fn settle(&mut self, rng: &mut Rng, duplicates: bool) {
        while !self.commands.is_empty() || !self.events.is_empty() {
            let n = (self.commands.len() + self.events.len()) as u64;
            let pick = rng.below(n) as usize;
            if pick < self.commands.len() {
                let (d, may_repeat) = self.commands.swap_remove(pick);
                self.run(&d);
                if duplicates && may_repeat && rng.chance(25) {
                    self.commands.push((d, false));
                }
            } else {
                let e = self.events.swap_remove(pick - self.commands.len());
                self.deliver(&e);
            }
        }
    }
}

/// What the scenarios did, to show they cover every path.
#[derive(Debug, Default)]
struct Tally {
    confirmed: usize,
    rejected: usize,
    releases: usize,
}

/// One random scenario: up to 4 skus (some never restocked), up to 4 orders competing for them,
/// restocks arriving while orders are handled.
fn scenario(seed: u64, duplicates: bool, tally: &mut Tally) {
    let mut rng = Rng(seed);
    let mut world = World::default();
    let skus: Vec<String> = (0..1 + rng.below(4)).map(|i| format!("sku-{i}")).collect();
    for sku in &skus {
        if rng.chance(80) {
            let command = Dispatch::to::<Inventory>(sku, &restock(1 + rng.below(6)));
            world.run(&command);
        }
    }
    let mut placed_lines = BTreeMap::new();
    for o in 0..1 + rng.below(4) {
        let id = format!("o-{o}");
        let mut lines = Vec::new();
        for sku in &skus {
            if rng.chance(60) {
                lines.push(line(sku, 1 + rng.below(4)));
            }
        }
        if lines.is_empty() {
            lines.push(line(&skus[0], 1 + rng.below(4)));
        }
        let command = Dispatch::to::<Order>(&id, &place(&format!("c-{}", o % 2), &lines));
        world.commands.push((command, false));
        placed_lines.insert(id, lines);
    }
    // Restocks while the orders are handled.
    for _ in 0..rng.below(3) {
        let sku = &skus[rng.below(skus.len() as u64) as usize];
        let command = Dispatch::to::<Inventory>(sku, &restock(1 + rng.below(3)));
        world.commands.push((command, false));
    }
    world.settle(&mut rng, duplicates);

    let ctx = format!("seed {seed} (duplicates: {duplicates})");
    // Every order is decided, and confirmed only with all its lines reserved.
    let mut held: BTreeMap<&str, BTreeMap<String, u64>> = BTreeMap::new();
    for (id, lines) in &placed_lines {
        let (order, _) = &world.orders[id];
        let outcomes = &world.outcomes[id];
        match order.status {
            OrderStatus::Confirmed => {
                tally.confirmed += 1;
                for l in lines {
                    held.entry(&l.sku)
                        .or_default()
                        .insert(id.clone(), l.quantity);
                }
                if !duplicates {
                    assert_eq!(outcomes, &vec![true; lines.len()], "{ctx}: {id}");
                }
            }
            OrderStatus::Rejected => {
                tally.rejected += 1;
                assert!(
                    outcomes.contains(&false),
                    "{ctx}: {id} rejected with no refusal"
                );
                let reason = order.reason.as_deref().unwrap();
                assert!(
                    lines
                        .iter()
                        .any(|l| reason.starts_with(&format!("{}: ", l.sku))),
                    "{ctx}: {id}: {reason}"
                );
                if !duplicates {
                    assert_eq!(outcomes.len(), lines.len(), "{ctx}: {id}");
                }
            }
            other => panic!("{ctx}: {id} is left {other:?}"),
        }
    }
    // Each sku holds exactly the confirmed orders' units, and every unit is accounted for.
    for sku in &skus {
        let Some((inventory, _)) = world.inventories.get(sku) else {
            continue;
        };
        let want = held.remove(sku.as_str()).unwrap_or_default();
        assert_eq!(inventory.reservations, want, "{ctx}: {sku}");
        assert_eq!(
            inventory.reserved,
            want.values().sum::<u64>(),
            "{ctx}: {sku}"
        );
        assert_eq!(
            inventory.available + inventory.reserved,
            world.restocked.get(sku).copied().unwrap_or(0),
            "{ctx}: {sku}"
        );
    }
    assert!(
        held.is_empty(),
        "{ctx}: confirmed lines of unknown skus: {held:?}"
    );
    tally.releases += world.releases;
}

#[test]
fn random_interleavings_keep_the_invariant_at_rest() {
    let mut tally = Tally::default();
    for seed in 0..1500 {
        scenario(seed, false, &mut tally);
    }
    assert!(
        tally.confirmed > 500 && tally.rejected > 500 && tally.releases > 200,
        "{tally:?}"
    );
}

#[test]
fn random_interleavings_with_commands_sent_twice_keep_the_invariant_at_rest() {
    let mut tally = Tally::default();
    for seed in 0..1500 {
        scenario(1_000_000 + seed, true, &mut tally);
    }
    assert!(
        tally.confirmed > 500 && tally.rejected > 500 && tally.releases > 200,
        "{tally:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The helpers fail when they should
// ---------------------------------------------------------------------------------------------

#[test]
#[should_panic(expected = "left: decided, right: expected")]
fn then_fails_on_other_events() {
    stock(&[restocked(1)])
        .when(reserve(O, 1))
        .then(&[reserved(O, 2)]);
}

#[test]
#[should_panic(expected = "was not accepted")]
fn then_fails_on_a_refusal() {
    order(&[]).when(OrderCommand::Confirm {}).then(&[]);
}

#[test]
#[should_panic(
    expected = "expected the refusal `order_rejected`, got the refusal `order_not_found`"
)]
fn then_error_fails_on_another_code() {
    order(&[])
        .when(OrderCommand::Confirm {})
        .then_error("order_rejected");
}

#[test]
#[should_panic(expected = "expected validate to refuse it saying \"quantity\", got the events")]
fn then_invalid_fails_on_an_accepted_command() {
    stock(&[]).when(restock(1)).then_invalid("quantity");
}

#[test]
#[should_panic(expected = "left: issued, right: expected")]
fn reaction_then_fails_on_other_commands() {
    given_reaction(&Fulfilment)
        .when(&o1_placed())
        .then(&[reserve_to("sku-a", O, 1)]);
}

#[test]
#[should_panic(
    expected = "order_fulfilment refused the prior event inventory/sku-a v1 `Restocked`"
)]
fn reaction_after_fails_on_a_refused_event() {
    given_reaction(&Fulfilment).after(&[inv("sku-a", 1, &restocked(1))]);
}
